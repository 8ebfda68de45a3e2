//! Every refusal, as the RFCs name it; never a 500.
