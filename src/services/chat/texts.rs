//! Every text a chat user reads, from the worker and from the broker, in English
//! and in the Spanish of the reference material (example 4.3: `Ingresa tu nombre de
//! usuario: `, `Bienvenido al chat! Escribe 'quit' para salir.`, `X se unió al
//! chat`, `X abandonó el chat`, `[PRIVADO de X]: …`, `Usuario 'X' no encontrado.`,
//! `Usuarios conectados: …`, `Uso: /whisper <usuario> <mensaje>`). Commands stay
//! as they are (`/join`, `quit`) in both.

use super::names::{MAX_CHARS, MAX_MARKS_IN_A_ROW, NameError};
use super::{HELP, MAX_LINE};
use crate::services::Lang;

/// What `/help` shows in Spanish.
const HELP_ES: &str = "\
comandos:
  TEXTO                    dice TEXTO a tu sala
  /list                    usuarios de tu sala (/list all: todos los conectados y su sala)
  /whisper USUARIO TEXTO   mensaje privado (también /w)
  /join SALA               ir a SALA (se crea si no existe)
  /leave                   volver a #lobby
  /rooms                   salas y cuántos hay en cada una
  /kick USUARIO [MOTIVO]   desconectar a USUARIO (solo administradores)
  /help                    este texto
  quit, /quit              salir
";

/// The texts of one language.
#[derive(Clone, Copy, Debug, Default)]
pub struct Texts {
    pub lang: Lang,
}

impl Texts {
    // Login.

    pub fn username_prompt(&self) -> &'static str {
        match self.lang {
            Lang::En => "Username: ",
            Lang::Es => "Ingresa tu nombre de usuario: ",
        }
    }
    pub fn password_prompt(&self) -> &'static str {
        match self.lang {
            Lang::En => "Password: ",
            Lang::Es => "Contraseña: ",
        }
    }
    pub fn welcome(&self, name: &str) -> String {
        lang_text!(
            self.lang,
            "Welcome, {name}! Type /help for commands, quit to leave.\n",
            "Bienvenido al chat, {name}! Escribe 'quit' para salir, /help para ver los comandos.\n"
        )
    }
    pub fn bye(&self) -> &'static str {
        match self.lang {
            Lang::En => "Bye.\n",
            Lang::Es => "¡Adiós!\n",
        }
    }
    pub fn invalid_name(&self, e: &NameError) -> String {
        let why = match self.lang {
            Lang::En => e.to_string(),
            Lang::Es => name_error_es(e),
        };
        lang_text!(
            self.lang,
            "error: invalid name: {why}\n",
            "error: nombre no válido: {why}\n"
        )
    }
    /// Why the broker refuses a name that is not in its kept spelling.
    pub fn invalid_name_short(&self) -> String {
        let rule = self.name_rule();
        lang_text!(
            self.lang,
            "invalid name ({rule})",
            "nombre no válido ({rule})"
        )
    }
    fn name_rule(&self) -> &'static str {
        match self.lang {
            Lang::En => super::names::RULE,
            Lang::Es => "de 1 a 32 letras, dígitos, _ - o .",
        }
    }
    pub fn name_taken(&self, name: &str) -> String {
        lang_text!(
            self.lang,
            "name {name} is taken",
            "el nombre {name} ya está en uso"
        )
    }
    pub fn login_incorrect(&self) -> &'static str {
        match self.lang {
            Lang::En => "error: login incorrect\n",
            Lang::Es => "error: usuario o contraseña incorrectos\n",
        }
    }
    pub fn too_many_failures(&self) -> &'static str {
        match self.lang {
            Lang::En => "error: login incorrect; too many failures, disconnecting\n",
            Lang::Es => {
                "error: usuario o contraseña incorrectos; demasiados intentos, desconectando\n"
            }
        }
    }

    // Input rules.

    pub fn line_too_long(&self) -> String {
        lang_text!(
            self.lang,
            "error: line too long (max {MAX_LINE} bytes), ignored\n",
            "error: línea demasiado larga (máximo {MAX_LINE} bytes), ignorada\n"
        )
    }
    pub fn invalid_utf8(&self) -> &'static str {
        match self.lang {
            Lang::En => "error: invalid UTF-8, line ignored\n",
            Lang::Es => "error: UTF-8 no válido, línea ignorada\n",
        }
    }
    pub fn rate_warning(&self, rate: u32) -> String {
        lang_text!(
            self.lang,
            "warning: more than {rate} lines a second; slow down or you will be disconnected\n",
            "aviso: más de {rate} líneas por segundo; ve más despacio o serás desconectado\n"
        )
    }
    pub fn rate_disconnect(&self, rate: u32) -> String {
        lang_text!(
            self.lang,
            "error: more than {rate} lines a second, disconnecting\n",
            "error: más de {rate} líneas por segundo, desconectando\n"
        )
    }
    pub fn idle_timeout(&self) -> &'static str {
        match self.lang {
            Lang::En => "error: idle timeout, disconnecting\n",
            Lang::Es => "error: demasiado tiempo sin actividad, desconectando\n",
        }
    }

    // Commands.

    pub fn help(&self) -> &'static str {
        match self.lang {
            Lang::En => HELP,
            Lang::Es => HELP_ES,
        }
    }
    pub fn usage_list(&self) -> &'static str {
        match self.lang {
            Lang::En => "error: usage: /list [all]\n",
            Lang::Es => "Uso: /list [all]\n",
        }
    }
    pub fn usage_whisper(&self) -> &'static str {
        match self.lang {
            Lang::En => "error: usage: /whisper USER TEXT\n",
            Lang::Es => "Uso: /whisper <usuario> <mensaje>\n",
        }
    }
    pub fn usage_join(&self) -> &'static str {
        match self.lang {
            Lang::En => "error: usage: /join ROOM\n",
            Lang::Es => "Uso: /join <sala>\n",
        }
    }
    pub fn usage_kick(&self) -> &'static str {
        match self.lang {
            Lang::En => "error: usage: /kick USER [REASON]\n",
            Lang::Es => "Uso: /kick <usuario> [motivo]\n",
        }
    }
    /// `room` as typed; `checked`: the worker's message (with the rule) or the
    /// broker's (without).
    pub fn invalid_room(&self, room: &str, checked: bool) -> String {
        match (self.lang, checked) {
            (Lang::En, true) => {
                format!("error: invalid room name {room} (1-32 letters, digits, _ or -)\n")
            }
            (Lang::En, false) => format!("error: invalid room name {room}\n"),
            (Lang::Es, true) => format!(
                "error: nombre de sala no válido {room} (de 1 a 32 letras, dígitos, _ o -)\n"
            ),
            (Lang::Es, false) => format!("error: nombre de sala no válido {room}\n"),
        }
    }
    pub fn unknown_command(&self, cmd: &str) -> String {
        lang_text!(
            self.lang,
            "error: unknown command {cmd} (try /help)\n",
            "error: comando desconocido {cmd} (prueba /help)\n"
        )
    }

    // What the broker tells.

    pub fn said(&self, name: &str, text: &str) -> String {
        format!("[{name}]: {text}\n")
    }
    pub fn private_from(&self, from: &str, text: &str) -> String {
        lang_text!(
            self.lang,
            "[private from {from}]: {text}\n",
            "[PRIVADO de {from}]: {text}\n"
        )
    }
    pub fn private_to(&self, to: &str, text: &str) -> String {
        lang_text!(
            self.lang,
            "[private to {to}]: {text}\n",
            "[PRIVADO para {to}]: {text}\n"
        )
    }
    pub fn no_user(&self, name: &str) -> String {
        lang_text!(
            self.lang,
            "error: no user {name}\n",
            "Usuario '{name}' no encontrado.\n"
        )
    }
    /// `/list all`: `list` is `NAME (ROOM), …`.
    pub fn online(&self, n: usize, list: &str) -> String {
        lang_text!(
            self.lang,
            "* online ({n}): {list}\n",
            "Usuarios conectados ({n}): {list}\n"
        )
    }
    pub fn users_in(&self, room: &str, n: usize, list: &str) -> String {
        lang_text!(
            self.lang,
            "* users in {room} ({n}): {list}\n",
            "* usuarios en {room} ({n}): {list}\n"
        )
    }
    pub fn rooms(&self, n: usize, list: &str) -> String {
        lang_text!(
            self.lang,
            "* rooms ({n}): {list}\n",
            "* salas ({n}): {list}\n"
        )
    }
    /// A user logged in (into `room`).
    pub fn joined_chat(&self, name: &str, room: &str) -> String {
        lang_text!(
            self.lang,
            "* {name} joined {room}\n",
            "* {name} se unió al chat ({room})\n"
        )
    }
    /// A user moved into `room`.
    pub fn joined_room(&self, name: &str, room: &str) -> String {
        lang_text!(
            self.lang,
            "* {name} joined {room}\n",
            "* {name} se unió a {room}\n"
        )
    }
    pub fn left_room(&self, name: &str, room: &str) -> String {
        lang_text!(
            self.lang,
            "* {name} left {room}\n",
            "* {name} salió de {room}\n"
        )
    }
    pub fn left_chat(&self, name: &str) -> String {
        lang_text!(
            self.lang,
            "* {name} left the chat\n",
            "* {name} abandonó el chat\n"
        )
    }
    pub fn now_in(&self, room: &str) -> String {
        lang_text!(
            self.lang,
            "* you are now in {room}\n",
            "* ahora estás en {room}\n"
        )
    }
    pub fn already_in(&self, room: &str) -> String {
        lang_text!(
            self.lang,
            "error: you are already in {room}\n",
            "error: ya estás en {room}\n"
        )
    }
    pub fn room_full(&self, room: &str, limit: usize) -> String {
        lang_text!(
            self.lang,
            "error: room {room} is full ({limit})\n",
            "error: la sala {room} está llena ({limit})\n"
        )
    }
    pub fn too_many_rooms(&self) -> &'static str {
        match self.lang {
            Lang::En => "error: too many rooms\n",
            Lang::Es => "error: demasiadas salas\n",
        }
    }
    pub fn not_allowed(&self) -> &'static str {
        match self.lang {
            Lang::En => "error: not allowed\n",
            Lang::Es => "error: no permitido\n",
        }
    }
    /// `why` is empty or `: REASON`.
    pub fn you_were_kicked(&self, by: &str, why: &str) -> String {
        lang_text!(
            self.lang,
            "* you were kicked by {by}{why}\n",
            "* {by} te expulsó{why}\n"
        )
    }
    pub fn was_kicked(&self, name: &str, by: &str, why: &str) -> String {
        lang_text!(
            self.lang,
            "* {name} was kicked by {by}{why}\n",
            "* {by} expulsó a {name}{why}\n"
        )
    }
    pub fn was_dropped(&self, name: &str) -> String {
        lang_text!(
            self.lang,
            "* {name} was dropped (too far behind)\n",
            "* {name} fue desconectado (se quedó demasiado atrás)\n"
        )
    }
    pub fn fell_behind(&self, kib: usize) -> String {
        lang_text!(
            self.lang,
            "error: disconnected: you fell too far behind (more than {kib} KiB of chat unread)\n",
            "error: desconectado: te quedaste demasiado atrás (más de {kib} KiB del chat sin leer)\n"
        )
    }
    pub fn not_logged_in(&self) -> &'static str {
        match self.lang {
            Lang::En => "error: not logged in\n",
            Lang::Es => "error: no has iniciado sesión\n",
        }
    }
    pub fn already_logged_in(&self) -> &'static str {
        match self.lang {
            Lang::En => "error: already logged in\n",
            Lang::Es => "error: ya has iniciado sesión\n",
        }
    }

    // The service itself.

    pub fn unavailable_try_later(&self) -> &'static str {
        match self.lang {
            Lang::En => "error: the chat service is unavailable, try again later\n",
            Lang::Es => "error: el servicio de chat no está disponible, inténtalo más tarde\n",
        }
    }
    pub fn unavailable(&self) -> &'static str {
        match self.lang {
            Lang::En => "error: the chat service is unavailable, disconnecting\n",
            Lang::Es => "error: el servicio de chat no está disponible, desconectando\n",
        }
    }
    pub fn not_answering(&self) -> &'static str {
        match self.lang {
            Lang::En => "error: the chat service is not answering, disconnecting\n",
            Lang::Es => "error: el servicio de chat no responde, desconectando\n",
        }
    }
    pub fn stalled(&self) -> &'static str {
        match self.lang {
            Lang::En => "* chat service is not answering; your lines wait until it does\n",
            Lang::Es => {
                "* el servicio de chat no responde; tus mensajes esperan hasta que responda\n"
            }
        }
    }
    pub fn answering_again(&self) -> &'static str {
        match self.lang {
            Lang::En => "* chat service is answering again\n",
            Lang::Es => "* el servicio de chat vuelve a responder\n",
        }
    }
    pub fn line_not_sent(&self) -> &'static str {
        match self.lang {
            Lang::En => "error: the chat service is not answering; line not sent\n",
            Lang::Es => "error: el servicio de chat no responde; mensaje no enviado\n",
        }
    }
    pub fn internal_error(&self) -> &'static str {
        match self.lang {
            Lang::En => "error: internal error, disconnecting\n",
            Lang::Es => "error: error interno, desconectando\n",
        }
    }
    /// Told to everyone online when the server starts draining (SIGTERM).
    pub fn shutting_down(&self) -> &'static str {
        match self.lang {
            Lang::En => "* server shutting down\n",
            Lang::Es => "* el servidor se está apagando\n",
        }
    }
    pub fn restarting(&self) -> &'static str {
        match self.lang {
            Lang::En => "* chat service restarting\n",
            Lang::Es => "* el servicio de chat se está reiniciando\n",
        }
    }
    pub fn back(&self, room: &str) -> String {
        lang_text!(
            self.lang,
            "* chat service is back; you are in {room}\n",
            "* el servicio de chat ha vuelto; estás en {room}\n"
        )
    }
    /// `--backend`: the relay to the other hosts is lost.
    pub fn local_only(&self) -> &'static str {
        match self.lang {
            Lang::En => "* chat is local-only until the backend is back\n",
            Lang::Es => "* el chat es solo local hasta que vuelva el servidor compartido\n",
        }
    }
    /// `--backend`: the relay is back.
    pub fn across_hosts_again(&self) -> &'static str {
        match self.lang {
            Lang::En => "* chat is across hosts again\n",
            Lang::Es => "* el chat vuelve a abarcar todos los servidores\n",
        }
    }
    /// `--backend`: another host claimed the name while the relay was away.
    pub fn name_lost(&self, name: &str) -> String {
        lang_text!(
            self.lang,
            "error: the name {name} was taken on another host while the backend was away, disconnecting\n",
            "error: otro servidor tomó el nombre {name} mientras el servidor compartido no estaba, desconectando\n"
        )
    }
    pub fn could_not_rejoin(&self, reason: &str) -> String {
        lang_text!(
            self.lang,
            "error: could not rejoin after the restart: {reason}\n",
            "error: no se pudo volver a entrar tras el reinicio: {reason}\n"
        )
    }
}

/// Why a name was refused, in Spanish.
fn name_error_es(e: &NameError) -> String {
    match e {
        NameError::Empty => "vacío".into(),
        NameError::TooLong => format!("más de {MAX_CHARS} caracteres"),
        NameError::Invisible(c) => format!(
            "carácter invisible, de control, de formato o bidireccional U+{:04X} no permitido",
            *c as u32
        ),
        NameError::NotAllowed(c) => {
            format!("'{c}' no permitido (de 1 a 32 letras, dígitos, _ - o .)")
        }
        NameError::BadStart => "debe empezar por una letra o un dígito".into(),
        NameError::Compatibility(c) => {
            format!("'{c}' es una variante de estilo o de ancho completo; escribe la letra normal")
        }
        NameError::TooManyMarks => format!("más de {MAX_MARKS_IN_A_ROW} acentos en una letra"),
        NameError::MixedScripts => "mezcla letras de distintos alfabetos".into(),
    }
}
