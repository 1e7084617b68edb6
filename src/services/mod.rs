//! The built-in services of the reference material. Each depends on the core; the
//! core never names a service.

pub mod chat;
pub mod echo;
pub mod files;
pub mod http;
pub mod models;
pub mod proxy;
pub mod time;
