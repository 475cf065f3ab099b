//! Servers the integration tests run on 127.0.0.1.
#![allow(dead_code)]

pub mod region_api;
pub mod s3_server;
