//! The built-in services of the reference material. Each depends on the core; the
//! core never names a service.

pub mod chat;
pub mod echo;
pub mod files;
pub mod http;
pub mod models;
pub mod time;

/// The language of the texts users read (`--lang`): English, or the Spanish of the
/// reference material. Each service keeps its texts in one place (its `Texts`).
#[derive(clap::ValueEnum, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Lang {
    #[default]
    En,
    Es,
}

/// One text in both languages: `lang_text!(lang, "English {x}", "Español {x}")`
/// formats the one `lang` asks for (inline arguments are captured as in `format!`).
#[macro_export]
macro_rules! lang_text {
    ($lang:expr, $en:literal, $es:literal) => {
        match $lang {
            $crate::services::Lang::En => format!($en),
            $crate::services::Lang::Es => format!($es),
        }
    };
}
