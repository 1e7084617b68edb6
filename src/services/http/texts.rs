//! Every text the http service's pages show, in English and in the Spanish of the
//! reference material (example 4.4: `Bienvenido al Servidor Simple`, `Hora del
//! servidor`, `Tu mensaje:`, `404 - Página No Encontrada`, `Método no permitido`,
//! `Error interno del servidor`). Status lines and headers stay as HTTP says;
//! only what a person reads changes.

use super::response::{HTML, Response, SERVER, escape_html, reason};
use crate::services::Lang;

/// The texts of one language.
#[derive(Clone, Copy, Debug, Default)]
pub struct Texts {
    pub lang: Lang,
}

impl Texts {
    /// The home page.
    pub fn home(&self) -> String {
        match self.lang {
            Lang::En => format!(
                "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>forkserve</title></head>\n<body>\n\
                 <h1>forkserve</h1>\n<p>A process-per-connection server. Try:</p>\n<ul>\n\
                 <li><a href=\"/time\">/time</a>: the server time, as JSON</li>\n\
                 <li><a href=\"/info\">/info</a>: this server, this worker and you (JSON with <code>Accept: application/json</code>)</li>\n\
                 <li><a href=\"/echo/hello%20world\">/echo/hello world</a>: your text back</li>\n\
                 </ul>\n<hr><address>{SERVER}</address>\n</body></html>\n"
            ),
            Lang::Es => format!(
                "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>Servidor Simple</title></head>\n<body>\n\
                 <h1>Bienvenido al Servidor Simple</h1>\n<ul>\n\
                 <li><a href=\"/time\">Hora del servidor</a></li>\n\
                 <li><a href=\"/info\">Información del servidor</a></li>\n\
                 <li><a href=\"/echo/Hola%20Mundo\">Echo: Hola Mundo</a></li>\n\
                 </ul>\n<hr><address>{SERVER}</address>\n</body></html>\n"
            ),
        }
    }

    /// The labels of the /info table: server, service, worker pid, model, client,
    /// local address.
    pub fn info_labels(&self) -> [&'static str; 6] {
        match self.lang {
            Lang::En => [
                "Server",
                "Service",
                "Worker pid",
                "Model",
                "Client",
                "Local address",
            ],
            Lang::Es => [
                "Servidor",
                "Servicio",
                "PID del proceso",
                "Modelo",
                "Cliente",
                "Dirección local",
            ],
        }
    }

    /// The /info page around its table rows.
    pub fn info_page(&self, table: &str) -> String {
        lang_text!(
            self.lang,
            "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>forkserve: info</title></head>\n<body>\n\
             <h1>Server info</h1>\n<table>\n{table}</table>\n<p><a href=\"/\">home</a></p>\n</body></html>\n",
            "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>Info del Servidor</title></head>\n<body>\n\
             <h1>Información del Servidor</h1>\n<table>\n{table}</table>\n<p><a href=\"/\">inicio</a></p>\n</body></html>\n"
        )
    }

    /// The /echo page: `text` already escaped, `n` its length in characters.
    pub fn echo_page(&self, text: &str, n: usize) -> String {
        lang_text!(
            self.lang,
            "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>forkserve: echo</title></head>\n<body>\n\
             <h1>Echo</h1>\n<p>You said: <strong>{text}</strong></p>\n<p>Length: {n} characters</p>\n\
             <p><a href=\"/\">home</a></p>\n</body></html>\n",
            "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>Echo</title></head>\n<body>\n\
             <h1>Echo</h1>\n<p>Tu mensaje: <strong>{text}</strong></p>\n<p>Longitud: {n} caracteres</p>\n\
             <p><a href=\"/\">inicio</a></p>\n</body></html>\n"
        )
    }

    /// Detail of a 404 for `path` (decoded).
    pub fn not_found(&self, path: &str) -> String {
        lang_text!(
            self.lang,
            "Nothing is at {path}.",
            "La página solicitada no existe."
        )
    }

    /// Detail of a 405 for `method`.
    pub fn method_not_allowed(&self, method: &str) -> String {
        lang_text!(
            self.lang,
            "{method} is not allowed here; use GET or HEAD.",
            "Método no permitido"
        )
    }

    /// Detail of a 400 for a bad `%` escape.
    pub fn bad_percent(&self) -> String {
        lang_text!(
            self.lang,
            "Bad percent-encoding in the path: % must be followed by two hex digits.",
            "Codificación % incorrecta en la ruta: % debe ir seguido de dos dígitos hexadecimales."
        )
    }

    /// Detail of a 400 for /echo text that is not UTF-8.
    pub fn not_utf8(&self) -> String {
        lang_text!(
            self.lang,
            "The decoded text is not UTF-8.",
            "El texto decodificado no es UTF-8."
        )
    }

    /// Detail of a 500.
    pub fn failed(&self) -> String {
        lang_text!(
            self.lang,
            "The server failed to handle this request.",
            "Error interno del servidor"
        )
    }

    /// Detail of a 408 after `secs` seconds.
    pub fn timed_out(&self, secs: f64) -> String {
        lang_text!(
            self.lang,
            "The request did not arrive within {secs} seconds.",
            "La petición no llegó en {secs} segundos."
        )
    }

    /// An error page with `detail`, a text of this file (so in this language).
    pub fn error(&self, status: u16, detail: &str) -> Response {
        match self.lang {
            Lang::En => Response::error(status, detail),
            Lang::Es => spanish_page(status, detail),
        }
    }

    /// An error page for what the request parser refused: in English with its
    /// specific `detail`; in Spanish with the status's sentence (the parser's
    /// details are English, and logged with the request).
    pub fn protocol_error(&self, status: u16, detail: &str) -> Response {
        match self.lang {
            Lang::En => Response::error(status, detail),
            Lang::Es => spanish_page(status, spanish_error(status).2),
        }
    }
}

/// A Spanish error page.
fn spanish_page(status: u16, detail: &str) -> Response {
    let (title, heading, _) = spanish_error(status);
    let body = format!(
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{title}</title></head>\n\
         <body><h1>{heading}</h1>\n<p>{}</p>\n<hr><address>{SERVER}</address></body></html>\n",
        escape_html(detail)
    );
    Response::new(status, HTML, body).header("Cache-Control", "no-store")
}

/// Title, heading and sentence of a Spanish error page.
fn spanish_error(status: u16) -> (String, String, &'static str) {
    let (name, sentence) = match status {
        400 => ("Petición Incorrecta", "La petición está mal formada."),
        404 => ("No Encontrado", "La página solicitada no existe."),
        405 => ("Método No Permitido", "Método no permitido"),
        408 => ("Tiempo de Espera Agotado", "La petición no llegó a tiempo."),
        413 => (
            "Contenido Demasiado Grande",
            "El cuerpo de la petición es demasiado grande.",
        ),
        431 => (
            "Cabeceras Demasiado Grandes",
            "Las cabeceras de la petición son demasiado grandes.",
        ),
        500 => ("Error Interno del Servidor", "Error interno del servidor"),
        501 => (
            "No Implementado",
            "El servidor no sabe atender esta petición.",
        ),
        505 => (
            "Versión HTTP No Soportada",
            "Esta versión de HTTP no está soportada.",
        ),
        _ => (reason(status), "Error."),
    };
    let title = format!("{status} - {name}");
    // The reference's 404 page says "Página No Encontrada" in its heading.
    let heading = if status == 404 {
        "404 - Página No Encontrada".to_string()
    } else {
        title.clone()
    };
    (title, heading, sentence)
}
