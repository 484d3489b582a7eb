//! A local SMTP relay for tests and benchmarks. It speaks the dialogue a relay
//! does (EHLO, AUTH PLAIN/LOGIN, MAIL, RCPT, DATA with dot-stuffing, RSET,
//! QUIT), refuses mail before AUTH, parses every message as MIME and checks
//! what a relay would (envelope matches the headers, Message-ID, Date,
//! multipart/alternative parts), and can be told to fail like real relays do.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use mail_parser::{MessageParser, MimeHeaders};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

/// How the relay answers valid mail.
#[derive(Debug, Clone, PartialEq)]
pub enum Mode {
    Accept,
    /// `421 4.3.2` at connection time (the relay is down).
    Down,
    /// `454 4.7.0` throttling at RCPT.
    Busy,
    /// Waits this long before answering the end of DATA.
    Slow(Duration),
}

/// A message the relay accepted, as parsed from the wire.
#[derive(Debug, Clone)]
pub struct Received {
    pub envelope_from: String,
    pub envelope_to: String,
    pub from: String,
    pub to: String,
    pub subject: String,
    pub message_id: String,
    pub text: String,
    pub html: Option<String>,
    /// `multipart/alternative`, `text/plain`, ...
    pub content_type: String,
    /// Queue id given in the 250 reply.
    pub queue_id: String,
}

#[derive(Default)]
pub struct Log {
    pub accepted: Vec<Received>,
    /// Refusals and checks that failed, with why.
    pub refused: Vec<String>,
    pub connections: usize,
}

struct Shared {
    user: String,
    password: String,
    mode: Mutex<Mode>,
    log: Mutex<Log>,
    /// Mailboxes answered with `550 5.1.1`.
    unknown: Mutex<HashSet<String>>,
}

/// A running fake relay.
pub struct FakeSmtp {
    pub port: u16,
    shared: Arc<Shared>,
}

impl FakeSmtp {
    /// A relay on 127.0.0.1 taking AUTH as `user` / `password`.
    pub async fn start(user: &str, password: &str) -> FakeSmtp {
        Self::start_on("127.0.0.1:0", user, password).await.expect("bind 127.0.0.1:0")
    }

    /// A relay listening on `bind` (`notiflow stand-ins` serves a configured relay's port).
    pub async fn start_on(bind: &str, user: &str, password: &str) -> std::io::Result<FakeSmtp> {
        let listener = TcpListener::bind(bind).await?;
        let port = listener.local_addr()?.port();
        let shared = Arc::new(Shared {
            user: user.into(),
            password: password.into(),
            mode: Mutex::new(Mode::Accept),
            log: Mutex::new(Log::default()),
            unknown: Mutex::new(HashSet::new()),
        });
        let serving = shared.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(session(stream, serving.clone()));
            }
        });
        Ok(FakeSmtp { port, shared })
    }

    pub fn set_mode(&self, mode: Mode) {
        *self.shared.mode.lock().unwrap() = mode;
    }

    /// Mail to this address is refused with `550 5.1.1 user unknown`.
    pub fn unknown_mailbox(&self, address: &str) {
        self.shared.unknown.lock().unwrap().insert(address.to_ascii_lowercase());
    }

    pub fn log(&self) -> std::sync::MutexGuard<'_, Log> {
        self.shared.log.lock().unwrap()
    }
}

impl Shared {
    fn refuse(&self, why: String) {
        self.log.lock().unwrap().refused.push(why);
    }
}

/// The state of one SMTP session.
#[derive(Default)]
struct Transaction {
    authenticated: bool,
    from: Option<String>,
    to: Vec<String>,
}

async fn session(stream: TcpStream, shared: Arc<Shared>) {
    shared.log.lock().unwrap().connections += 1;
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read);
    let mode = shared.mode.lock().unwrap().clone();
    if mode == Mode::Down {
        let _ = write.write_all(b"421 4.3.2 Service not available, closing channel\r\n").await;
        return;
    }
    let mut state = Transaction::default();
    let reply = |text: String| text + "\r\n";
    if write.write_all(reply("220 fake.notiflow ESMTP ready".into()).as_bytes()).await.is_err() {
        return;
    }
    let mut line = String::new();
    loop {
        line.clear();
        match lines.read_line(&mut line).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let command = line.trim_end_matches(['\r', '\n']).to_string();
        let verb = command.split_whitespace().next().unwrap_or("").to_ascii_uppercase();
        let answer = match verb.as_str() {
            "EHLO" => "250-fake.notiflow\r\n250-AUTH PLAIN LOGIN\r\n250-8BITMIME\r\n250 SMTPUTF8".to_string(),
            "HELO" => "250 fake.notiflow".to_string(),
            "AUTH" => auth(&command, &mut lines, &mut write, &shared, &mut state).await,
            "MAIL" if !state.authenticated => "530 5.7.0 Authentication required".to_string(),
            "MAIL" => match angle_address(&command) {
                Some(from) => {
                    state.from = Some(from);
                    state.to.clear();
                    "250 2.1.0 Sender OK".to_string()
                }
                None => "501 5.5.4 Syntax: MAIL FROM:<address>".to_string(),
            },
            "RCPT" if state.from.is_none() => "503 5.5.1 Need MAIL first".to_string(),
            "RCPT" => rcpt(&command, &shared, &mut state),
            "DATA" if state.to.is_empty() => "503 5.5.1 Need RCPT first".to_string(),
            "DATA" => {
                if write.write_all(b"354 End data with <CR><LF>.<CR><LF>\r\n").await.is_err() {
                    return;
                }
                let Some(raw) = read_data(&mut lines).await else { return };
                let mode = shared.mode.lock().unwrap().clone();
                if let Mode::Slow(delay) = mode {
                    tokio::time::sleep(delay).await;
                }
                let answer = accept(&raw, &shared, &state);
                state.from = None;
                state.to.clear();
                answer
            }
            "RSET" => {
                state.from = None;
                state.to.clear();
                "250 2.0.0 OK".to_string()
            }
            "NOOP" => "250 2.0.0 OK".to_string(),
            "QUIT" => {
                let _ = write.write_all(b"221 2.0.0 Bye\r\n").await;
                return;
            }
            _ => "502 5.5.2 Command not recognized".to_string(),
        };
        if write.write_all(reply(answer).as_bytes()).await.is_err() {
            return;
        }
    }
}

async fn auth(
    command: &str,
    lines: &mut BufReader<tokio::net::tcp::OwnedReadHalf>,
    write: &mut tokio::net::tcp::OwnedWriteHalf,
    shared: &Shared,
    state: &mut Transaction,
) -> String {
    let words: Vec<&str> = command.split_whitespace().collect();
    let decode = |text: &str| STANDARD.decode(text.trim()).ok().and_then(|b| String::from_utf8(b).ok()).unwrap_or_default();
    let (user, password) = match words.get(1).map(|m| m.to_ascii_uppercase()).as_deref() {
        // PLAIN: base64("\0user\0password"), sent with the command or after a 334.
        Some("PLAIN") => {
            let initial = match words.get(2) {
                Some(initial) => initial.to_string(),
                None => ask(lines, write, "334 ").await,
            };
            let decoded = decode(&initial);
            let mut parts = decoded.split('\0').skip(1);
            (parts.next().unwrap_or("").to_string(), parts.next().unwrap_or("").to_string())
        }
        Some("LOGIN") => {
            let user = decode(&ask(lines, write, "334 VXNlcm5hbWU6").await);
            (user, decode(&ask(lines, write, "334 UGFzc3dvcmQ6").await))
        }
        _ => return "504 5.5.4 Unrecognized authentication type".to_string(),
    };
    if user == shared.user && password == shared.password {
        state.authenticated = true;
        "235 2.7.0 Authentication successful".to_string()
    } else {
        shared.refuse(format!("bad credentials for `{user}`"));
        "535 5.7.8 Authentication credentials invalid".to_string()
    }
}

async fn ask(lines: &mut BufReader<tokio::net::tcp::OwnedReadHalf>, write: &mut tokio::net::tcp::OwnedWriteHalf, prompt: &str) -> String {
    let _ = write.write_all(format!("{prompt}\r\n").as_bytes()).await;
    let mut answer = String::new();
    let _ = lines.read_line(&mut answer).await;
    answer.trim_end().to_string()
}

fn rcpt(command: &str, shared: &Shared, state: &mut Transaction) -> String {
    let Some(to) = angle_address(command) else { return "501 5.5.4 Syntax: RCPT TO:<address>".to_string() };
    if *shared.mode.lock().unwrap() == Mode::Busy {
        return "454 4.7.0 Throttling failure: Maximum sending rate exceeded".to_string();
    }
    if shared.unknown.lock().unwrap().contains(&to.to_ascii_lowercase()) {
        return format!("550 5.1.1 <{to}>: Recipient address rejected: User unknown");
    }
    state.to.push(to);
    "250 2.1.5 Recipient OK".to_string()
}

/// `MAIL FROM:<a@b> BODY=8BITMIME` -> `a@b`.
fn angle_address(command: &str) -> Option<String> {
    let start = command.find('<')?;
    let end = command[start..].find('>')? + start;
    let address = &command[start + 1..end];
    address.contains('@').then(|| address.to_string())
}

/// The message up to the lone dot, dot-stuffing undone.
async fn read_data(lines: &mut BufReader<tokio::net::tcp::OwnedReadHalf>) -> Option<Vec<u8>> {
    let mut raw = Vec::new();
    let mut line = Vec::new();
    loop {
        line.clear();
        if lines.read_until(b'\n', &mut line).await.ok()? == 0 {
            return None;
        }
        if line == b".\r\n" {
            return Some(raw);
        }
        let unstuffed = if line.starts_with(b"..") { &line[1..] } else { &line[..] };
        raw.extend_from_slice(unstuffed);
    }
}

/// Checks the message as a relay would and answers the end of DATA.
fn accept(raw: &[u8], shared: &Shared, state: &Transaction) -> String {
    match check(raw, state) {
        Ok(mut received) => {
            let mut log = shared.log.lock().unwrap();
            received.queue_id = format!("Q{:06}", log.accepted.len() + 1);
            let answer = format!("250 2.0.0 Ok: queued as {}", received.queue_id);
            log.accepted.push(received);
            answer
        }
        Err(why) => {
            shared.refuse(why.clone());
            format!("554 5.6.0 {why}")
        }
    }
}

fn check(raw: &[u8], state: &Transaction) -> Result<Received, String> {
    let message = MessageParser::default().parse(raw).ok_or("not a MIME message")?;
    let first_address = |list: Option<&mail_parser::Address>| -> String {
        list.and_then(|a| a.first()).and_then(|a| a.address()).unwrap_or("").to_string()
    };
    let from = first_address(message.from());
    let to = first_address(message.to());
    let envelope_from = state.from.clone().unwrap_or_default();
    let envelope_to = state.to.first().cloned().unwrap_or_default();
    if !from.eq_ignore_ascii_case(&envelope_from) {
        return Err(format!("From `{from}` is not the envelope sender `{envelope_from}`"));
    }
    if !to.eq_ignore_ascii_case(&envelope_to) {
        return Err(format!("To `{to}` is not the envelope recipient `{envelope_to}`"));
    }
    let message_id = message.message_id().ok_or("no Message-ID")?.to_string();
    message.date().ok_or("no Date")?;
    if message.header("MIME-Version").is_none() {
        return Err("no MIME-Version".into());
    }
    let content_type = message.content_type().map(|c| match c.subtype() {
        Some(sub) => format!("{}/{}", c.ctype(), sub),
        None => c.ctype().to_string(),
    });
    let content_type = content_type.unwrap_or_else(|| "text/plain".into()).to_ascii_lowercase();
    let text = message.body_text(0).ok_or("no text part")?.to_string();
    let html = if content_type == "multipart/alternative" {
        if message.text_body.len() != 1 || message.html_body.len() != 1 {
            return Err("multipart/alternative needs one text and one HTML part".into());
        }
        Some(message.body_html(0).ok_or("no HTML part")?.to_string())
    } else {
        None
    };
    let subject = message.subject().unwrap_or("").to_string();
    Ok(Received { envelope_from, envelope_to, from, to, subject, message_id, text, html, content_type, queue_id: String::new() })
}
