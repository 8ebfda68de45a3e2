//! `WebForm` (the form decoder every page uses) on any body and content type: never
//! panics, and anything it cannot read is a 400 (`AppError::BadRequest`), nothing else.
#![no_main]

use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

use axum::body::Body;
use axum::extract::FromRequest;
use axum::http::Request;
use latchkey::web::AppError;
use latchkey::web::WebForm;
use libfuzzer_sys::fuzz_target;

/// The fields the pages' forms have, in the types they use.
#[derive(serde::Deserialize)]
#[allow(dead_code)]
struct AnyForm {
    #[serde(default)]
    email: String,
    #[serde(default)]
    password: String,
    #[serde(default)]
    next: String,
    #[serde(default)]
    token: String,
    new_password: Option<String>,
    new_password_confirm: Option<String>,
    #[serde(default)]
    totp_code: String,
    count: Option<u64>,
}

const CONTENT_TYPES: &[&str] = &[
    "application/x-www-form-urlencoded",
    "application/x-www-form-urlencoded; charset=utf-8",
    "text/plain",
    "",
];

/// The body is in memory, so decoding never waits: one poll finishes it.
fn now<F: Future>(future: F) -> F::Output {
    let mut future = pin!(future);
    match future
        .as_mut()
        .poll(&mut Context::from_waker(Waker::noop()))
    {
        Poll::Ready(output) => output,
        Poll::Pending => panic!("decoding an in-memory body waited"),
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, body)) = data.split_first() else {
        return;
    };
    let mut request = Request::post("/sign-in");
    let content_type = CONTENT_TYPES[usize::from(selector) % CONTENT_TYPES.len()];
    if !content_type.is_empty() {
        request = request.header("content-type", content_type);
    }
    let request = request.body(Body::from(body.to_vec())).expect("request");
    match now(WebForm::<AnyForm>::from_request(request, &())) {
        Ok(WebForm(_)) => {}
        Err(AppError::BadRequest(_)) => {}
        Err(other) => panic!("not a 400: {other:?}"),
    }
});
