//! The built-in services of the reference material. Each depends on the core; the
//! core never names a service.

// First, so that every service below sees `lang_text!`.
#[macro_use]
mod lang;

pub mod chat;
pub mod echo;
pub mod exec;
pub mod files;
pub mod http;
pub mod metrics;
pub mod models;
pub mod proxy;
pub mod time;

pub use lang::Lang;
