//! `--lang`: the language of the texts users read, and the macro with which each
//! service writes a text in both languages side by side.

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
macro_rules! lang_text {
    ($lang:expr, $en:literal, $es:literal) => {
        match $lang {
            $crate::services::Lang::En => format!($en),
            $crate::services::Lang::Es => format!($es),
        }
    };
}
