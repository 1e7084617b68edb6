//! User names: what a chat user may be called, the one spelling a name is kept in,
//! and the key two names are compared by.
//!
//! A name is 1-32 characters: Unicode letters, combining marks and decimal digits
//! (`José`, `Ñandú`, `Zoë`, `山田`), plus `_`, `-` and `.`, starting with a letter
//! or a digit. It is kept in NFC (`e` + U+0301 and `é` are one name) and compared
//! case-insensitively (`ñandú`, `ÑANDÚ` and `Ñandú` are one user), by its lower case
//! in NFC, as RFC 8265 (PRECIS UsernameCaseMapped) does. Spaces inside a name
//! (`Juan Pérez`) become `_` (`Juan_Pérez`), so a name is always one word and
//! `/whisper NAME TEXT` and `/kick NAME` never need quoting; spaces around it are
//! trimmed.
//!
//! Refused, each with its own reason: control and format characters (including
//! the bidirectional overrides and isolates, U+202A-U+202E and U+2066-U+2069, and
//! zero-width joiners), other punctuation and symbols, compatibility variants that
//! only look like ordinary letters (fullwidth `ａｎｎ`, mathematical `𝐚𝐧𝐧`: the name
//! must be unchanged by NFKC), more than [`MAX_MARKS_IN_A_ROW`] combining marks on
//! one letter, characters outside Unicode's identifier profile (UTS #39: obsolete
//! and limited-use scripts), and names that mix scripts beyond UTS #39's "highly
//! restrictive" level (one script, or Latin with Han and Japanese kana, Han and
//! Bopomofo, or Han and Hangul): a Cyrillic `а` in `pаco` is refused. Names made
//! wholly of another script's lookalikes (all-Cyrillic `асе`) are not caught.

use unicode_normalization::UnicodeNormalization;
use unicode_properties::{GeneralCategory, GeneralCategoryGroup, UnicodeGeneralCategory};
use unicode_security::{GeneralSecurityProfile, RestrictionLevel, RestrictionLevelDetection};

/// Longest name, in characters.
pub const MAX_CHARS: usize = 32;

/// Combining marks allowed on one base character (Vietnamese needs two).
pub const MAX_MARKS_IN_A_ROW: usize = 3;

/// The rule, for error messages.
pub const RULE: &str = "1-32 letters, digits, _ - or .";

/// Why a name was refused (shown to the user after `error: invalid name: `).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NameError {
    Empty,
    TooLong,
    /// A control, format or bidirectional character (its code point).
    Invisible(char),
    /// A character the rule does not allow.
    NotAllowed(char),
    /// Starts with something other than a letter or a digit.
    BadStart,
    /// A styled or fullwidth variant of an ordinary character.
    Compatibility(char),
    TooManyMarks,
    MixedScripts,
}

impl std::fmt::Display for NameError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NameError::Empty => write!(f, "empty"),
            NameError::TooLong => write!(f, "longer than {MAX_CHARS} characters"),
            NameError::Invisible(c) => write!(
                f,
                "invisible, control, format or bidirectional character U+{:04X} not allowed",
                *c as u32
            ),
            NameError::NotAllowed(c) => write!(f, "'{c}' not allowed ({RULE})"),
            NameError::BadStart => write!(f, "must start with a letter or a digit"),
            NameError::Compatibility(c) => {
                write!(
                    f,
                    "'{c}' is a styled or fullwidth variant; type the plain letter"
                )
            }
            NameError::TooManyMarks => write!(f, "too many accents on one letter"),
            NameError::MixedScripts => write!(f, "mixes letters of different scripts"),
        }
    }
}

/// The name `input` stands for, in its kept spelling (trimmed, inner spaces as
/// `_`, NFC), or why it is refused.
pub fn user_name(input: &str) -> Result<String, NameError> {
    let spaced: String = input
        .trim()
        .chars()
        .map(|c| if c == ' ' { '_' } else { c })
        .collect();
    let name: String = spaced.nfc().collect();
    check(&name)?;
    Ok(name)
}

/// True when `name` is a name in its kept spelling (what the broker accepts).
pub fn valid_user_name(name: &str) -> bool {
    user_name(name).is_ok_and(|n| n == name)
}

/// The key two names are compared by: lower case, NFC.
pub fn name_key(name: &str) -> String {
    name.to_lowercase().nfc().collect()
}

fn check(name: &str) -> Result<(), NameError> {
    let count = name.chars().count();
    if count == 0 {
        return Err(NameError::Empty);
    }
    if count > MAX_CHARS {
        return Err(NameError::TooLong);
    }
    let mut marks = 0;
    for c in name.chars() {
        let cat = c.general_category();
        let group = c.general_category_group();
        if matches!(group, GeneralCategoryGroup::Other) || c.is_whitespace() {
            return Err(NameError::Invisible(c));
        }
        let allowed = matches!(
            group,
            GeneralCategoryGroup::Letter | GeneralCategoryGroup::Mark
        ) || cat == GeneralCategory::DecimalNumber
            || matches!(c, '_' | '-' | '.');
        if !allowed {
            return Err(NameError::NotAllowed(c));
        }
        marks = if group == GeneralCategoryGroup::Mark {
            marks + 1
        } else {
            0
        };
        if marks > MAX_MARKS_IN_A_ROW {
            return Err(NameError::TooManyMarks);
        }
    }
    let first = name.chars().next().expect("not empty");
    if !(first.is_alphanumeric()) {
        return Err(NameError::BadStart);
    }
    if let Some(c) = name
        .chars()
        .find(|&c| !std::iter::once(c).nfkc().eq(std::iter::once(c)))
    {
        return Err(NameError::Compatibility(c));
    }
    if let Some(c) = name.chars().find(|&c| !c.identifier_allowed()) {
        return Err(NameError::NotAllowed(c));
    }
    if !name.check_restriction_level(RestrictionLevel::HighlyRestrictive) {
        return Err(NameError::MixedScripts);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spanish_names_and_their_spellings_are_one_name() {
        assert_eq!(user_name("José").as_deref(), Ok("José"));
        assert_eq!(user_name(" Ñandú ").as_deref(), Ok("Ñandú"));
        assert_eq!(user_name("Juan Pérez").as_deref(), Ok("Juan_Pérez"));
        // e + combining acute is stored composed.
        assert_eq!(user_name("Jose\u{301}").as_deref(), Ok("José"));
        assert_eq!(name_key("ÑANDÚ"), name_key("ñandú"));
        assert_eq!(name_key("JOSE\u{301}"), name_key("josé"));
        for ok in [
            "ann_B-3",
            "a.b",
            "山田",
            "Zoë",
            "Nguyễn",
            "ひらがなと漢字",
            "Δημήτρης",
            "x1",
        ] {
            assert!(valid_user_name(ok), "{ok}");
        }
        assert!(valid_user_name(&"ñ".repeat(32)));
    }

    #[test]
    fn tricks_are_refused() {
        assert_eq!(
            user_name("ann\u{202E}nimda"),
            Err(NameError::Invisible('\u{202E}'))
        );
        assert_eq!(
            user_name("a\u{2066}b"),
            Err(NameError::Invisible('\u{2066}'))
        );
        assert_eq!(
            user_name("a\u{200D}b"),
            Err(NameError::Invisible('\u{200D}'))
        );
        assert_eq!(user_name("a\tb"), Err(NameError::Invisible('\t')));
        assert_eq!(user_name("a\u{0}b"), Err(NameError::Invisible('\0')));
        // Cyrillic а among Latin letters.
        assert_eq!(user_name("p\u{430}co"), Err(NameError::MixedScripts));
        assert_eq!(user_name("ａｎｎ"), Err(NameError::Compatibility('ａ')));
        assert_eq!(
            user_name("\u{1D41A}nn"),
            Err(NameError::Compatibility('\u{1D41A}'))
        );
        assert_eq!(
            user_name("a\u{301}\u{302}\u{303}\u{304}\u{305}"),
            Err(NameError::TooManyMarks)
        );
        assert_eq!(user_name("-ann"), Err(NameError::BadStart));
        assert_eq!(user_name("a/b"), Err(NameError::NotAllowed('/')));
        assert_eq!(user_name("a😀"), Err(NameError::NotAllowed('😀')));
        assert_eq!(user_name("  "), Err(NameError::Empty));
        assert_eq!(user_name(&"ñ".repeat(33)), Err(NameError::TooLong));
        assert!(!valid_user_name("Juan Pérez"), "the kept spelling has _");
        assert!(!valid_user_name("Jose\u{301}"), "the kept spelling is NFC");
    }
}
