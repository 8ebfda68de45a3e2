//! "Firefox on Linux": a user agent said the way people recognise their devices.

/// A short description of the browser and system, or "an unknown browser".
pub fn describe_user_agent(user_agent: Option<&str>) -> String {
    let parser = woothee::parser::Parser::new();
    let Some(parsed) = user_agent.and_then(|ua| parser.parse(ua)) else {
        return "an unknown browser".to_owned();
    };
    let known = |s: &str| !s.is_empty() && s != woothee::woothee::VALUE_UNKNOWN;
    match (known(parsed.name), known(parsed.os)) {
        (true, true) => format!("{} on {}", parsed.name, parsed.os),
        (true, false) => parsed.name.to_owned(),
        (false, true) => format!("a browser on {}", parsed.os),
        (false, false) => "an unknown browser".to_owned(),
    }
}
