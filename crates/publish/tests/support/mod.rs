//! Servers the integration tests run on 127.0.0.1.
#![allow(dead_code)]

pub mod api_stub;
pub mod s3_server;
