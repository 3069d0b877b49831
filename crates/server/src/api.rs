//! The OpenAI request bodies sieve accepts, with the `sieve` extension, and their checks.
//!
//! Fields that OpenAI defines but sieve does not implement are accepted only at their
//! neutral value (`n = 1`, penalties 0, no log-probabilities), so a client never gets
//! something other than what it asked for; unknown fields are refused by name.

use serde::Deserialize;
use serde_json::Value;

use crate::error::{Error, Result};

/// A stop condition: one string or several.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Stop {
    /// One stop string.
    One(String),
    /// Up to four stop strings.
    Many(Vec<String>),
}

/// `stream_options`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamOptions {
    /// Send a last chunk with the usage.
    #[serde(default)]
    pub include_usage: bool,
}

/// How a request asks for pruning: `"sieve": {"policy": "snapkv", "keep": 0.25}`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SieveOptions {
    /// A preset name (`none`, `snapkv`, ... as in `configs/`, or `NAME@K`), or an inline
    /// policy object with the keys of a policy file.
    pub policy: Option<Value>,
    /// The policy's kept fraction, overridden.
    pub keep: Option<f64>,
    /// Whether a conversation's earlier messages may be answered from, and stored in, the
    /// server's cache of compressed contexts (default true).
    pub reuse: Option<bool>,
}

/// One chat message; content as a string or as text parts.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChatMessage {
    /// `system`, `developer`, `user` or `assistant`.
    pub role: String,
    /// The text.
    pub content: Content,
    /// A participant's name (accepted, not shown to the model).
    pub name: Option<String>,
}

/// Message content.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Content {
    /// Plain text.
    Text(String),
    /// Parts; only `{"type": "text", "text": ...}` is supported.
    Parts(Vec<Part>),
}

/// One part of a message's content.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Part {
    /// Must be `text`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The text.
    pub text: Option<String>,
}

/// What chat and completion requests share.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Common {
    /// The model's id (optional: this server serves one).
    pub model: Option<String>,
    /// Most tokens to generate.
    pub max_tokens: Option<usize>,
    /// The newer name of `max_tokens` (chat).
    pub max_completion_tokens: Option<usize>,
    /// 0 for greedy decoding (the default is 1, as OpenAI's).
    pub temperature: Option<f32>,
    /// Nucleus sampling.
    pub top_p: Option<f32>,
    /// Seed of the sampler.
    pub seed: Option<u64>,
    /// Stop strings.
    pub stop: Option<Stop>,
    /// Server-sent events.
    #[serde(default)]
    pub stream: bool,
    /// Streaming options.
    pub stream_options: Option<StreamOptions>,
    /// Choices per request: only 1.
    pub n: Option<usize>,
    /// Accepted, unused.
    pub user: Option<String>,
    /// Only 0.
    pub presence_penalty: Option<f32>,
    /// Only 0.
    pub frequency_penalty: Option<f32>,
    /// Only false / null.
    pub logprobs: Option<Value>,
    /// Pruning of this request.
    pub sieve: Option<SieveOptions>,
}

/// `POST /v1/chat/completions`.
#[derive(Debug, Clone)]
pub struct ChatRequest {
    /// The conversation.
    pub messages: Vec<ChatMessage>,
    /// The rest.
    pub common: Common,
}

/// `POST /v1/completions`.
#[derive(Debug, Clone)]
pub struct CompletionRequest {
    /// The prompt (one string).
    pub prompt: Value,
    /// The rest.
    pub common: Common,
}

/// A JSON object body.
fn object(body: &[u8]) -> Result<serde_json::Map<String, Value>> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(Error::Invalid { message: "the request body must be a JSON object".into(), param: None }),
        Err(e) => Err(Error::Invalid { message: format!("the request body is not valid JSON: {e}"), param: None }),
    }
}

/// Deserializes `value` (the field `at` of the body, or the body itself when empty),
/// naming the field that is wrong.
fn from_value<T: serde::de::DeserializeOwned>(value: Value, at: &str) -> Result<T> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let message = e.inner().to_string();
        // The path ends at the offending field (an unknown one included).
        let inner = e.path().to_string();
        let param = match (at.is_empty(), inner.is_empty() || inner == ".") {
            (true, _) => inner,
            (false, true) => at.to_string(),
            (false, false) if inner.starts_with('[') => format!("{at}{inner}"),
            (false, false) => format!("{at}.{inner}"),
        };
        Error::Invalid {
            message: format!("invalid request: {message}"),
            param: (!param.is_empty() && param != ".").then_some(param),
        }
    })
}

/// A required field of the body.
fn take(map: &mut serde_json::Map<String, Value>, field: &str) -> Result<Value> {
    map.remove(field).ok_or_else(|| Error::invalid(field, format!("missing field `{field}`")))
}

impl ChatRequest {
    /// Parses a body.
    pub fn parse(body: &[u8]) -> Result<Self> {
        let mut map = object(body)?;
        let messages: Vec<ChatMessage> = from_value(take(&mut map, "messages")?, "messages")?;
        if messages.is_empty() {
            return Err(Error::invalid("messages", "at least one message"));
        }
        Ok(Self { messages, common: from_value(Value::Object(map), "")? })
    }
}

impl CompletionRequest {
    /// Parses a body.
    pub fn parse(body: &[u8]) -> Result<Self> {
        let mut map = object(body)?;
        let prompt = take(&mut map, "prompt")?;
        if map.get("suffix").is_some_and(|s| !s.is_null() && s.as_str() != Some("")) {
            return Err(Error::invalid("suffix", "suffix is not supported"));
        }
        if map.get("echo").is_some_and(|e| e.as_bool() == Some(true)) {
            return Err(Error::invalid("echo", "echo is not supported"));
        }
        map.remove("suffix");
        map.remove("echo");
        Ok(Self { prompt, common: from_value(Value::Object(map), "")? })
    }

    /// The prompt text.
    pub fn prompt_text(&self) -> Result<String> {
        match &self.prompt {
            Value::String(s) if !s.is_empty() => Ok(s.clone()),
            Value::Array(a) if a.len() == 1 && a[0].as_str().is_some_and(|s| !s.is_empty()) => {
                Ok(a[0].as_str().unwrap_or_default().to_string())
            }
            Value::String(_) => Err(Error::invalid("prompt", "the prompt is empty")),
            _ => Err(Error::invalid("prompt", "the prompt must be one non-empty string")),
        }
    }
}

/// Sampling and length settings of a request, checked.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Most tokens to generate.
    pub max_tokens: usize,
    /// Sampling.
    pub sampling: sieve_engine::SamplingParams,
    /// Stop strings.
    pub stop: Vec<String>,
    /// Streamed.
    pub stream: bool,
    /// A usage chunk at the end of a stream.
    pub include_usage: bool,
}

impl Common {
    /// Checks the fields and returns the settings; `served` is the model's id.
    pub fn settings(&self, served: &str, default_max_tokens: usize) -> Result<Settings> {
        if let Some(m) = &self.model
            && m != served
        {
            return Err(Error::UnknownModel(m.clone()));
        }
        if self.n.is_some_and(|n| n != 1) {
            return Err(Error::invalid("n", "sieve returns one choice per request (n = 1)"));
        }
        for (name, v) in [("presence_penalty", self.presence_penalty), ("frequency_penalty", self.frequency_penalty)] {
            if v.is_some_and(|v| v != 0.0) {
                return Err(Error::invalid(name, format!("{name} is not supported (only 0)")));
            }
        }
        if self.logprobs.as_ref().is_some_and(|v| !matches!(v, Value::Null | Value::Bool(false))) {
            return Err(Error::invalid("logprobs", "log-probabilities are not supported"));
        }
        let max_tokens = self.max_completion_tokens.or(self.max_tokens).unwrap_or(default_max_tokens);
        if max_tokens == 0 {
            let param = if self.max_completion_tokens.is_some() { "max_completion_tokens" } else { "max_tokens" };
            return Err(Error::invalid(param, "must be at least 1"));
        }
        let temperature = self.temperature.unwrap_or(1.0);
        if !(0.0..=2.0).contains(&temperature) {
            return Err(Error::invalid("temperature", format!("{temperature} is out of range [0, 2]")));
        }
        let top_p = self.top_p.unwrap_or(1.0);
        if !(top_p > 0.0 && top_p <= 1.0) {
            return Err(Error::invalid("top_p", format!("{top_p} is out of range (0, 1]")));
        }
        let stop = match &self.stop {
            None => Vec::new(),
            Some(Stop::One(s)) => vec![s.clone()],
            Some(Stop::Many(v)) => v.clone(),
        };
        if stop.len() > 4 || stop.iter().any(String::is_empty) {
            return Err(Error::invalid("stop", "up to 4 non-empty stop strings"));
        }
        let sampling = sieve_engine::SamplingParams {
            temperature,
            top_k: None,
            top_p: (top_p < 1.0).then_some(top_p),
            repetition_penalty: 1.0,
            seed: self.seed.unwrap_or(0),
        };
        sampling.validate().map_err(|e| Error::invalid("temperature", e.to_string()))?;
        let include_usage = self.stream_options.as_ref().is_some_and(|o| o.include_usage);
        if self.stream_options.is_some() && !self.stream {
            return Err(Error::invalid("stream_options", "stream_options needs stream = true"));
        }
        Ok(Settings { max_tokens, sampling, stop, stream: self.stream, include_usage })
    }
}

impl ChatMessage {
    /// The message as the chat template's.
    pub fn to_message(&self, i: usize) -> Result<sieve_engine::template::Message> {
        let role = match self.role.as_str() {
            "system" | "developer" => "system",
            "user" => "user",
            "assistant" => "assistant",
            other => {
                return Err(Error::invalid(
                    format!("messages[{i}].role"),
                    format!("unknown role `{other}` (system, developer, user, assistant)"),
                ));
            }
        };
        let text = match &self.content {
            Content::Text(t) => t.clone(),
            Content::Parts(parts) => {
                let mut text = String::new();
                for (j, p) in parts.iter().enumerate() {
                    match (p.kind.as_str(), &p.text) {
                        ("text", Some(t)) => text.push_str(t),
                        _ => {
                            return Err(Error::invalid(
                                format!("messages[{i}].content[{j}]"),
                                "only text parts ({\"type\": \"text\", \"text\": ...}) are supported",
                            ));
                        }
                    }
                }
                text
            }
        };
        Ok(sieve_engine::template::Message::new(role, text))
    }
}

impl SieveOptions {
    /// The policy of a request: the server's `default` unless the request names a preset
    /// (looked up in `presets`; never a path, so a request cannot read the server's
    /// files) or gives one inline, with `keep` applied.
    pub fn policy(&self, default: &sieve_core::Policy, presets: &std::path::Path) -> Result<sieve_core::Policy> {
        let policy = match &self.policy {
            None | Some(Value::Null) => default.clone(),
            Some(Value::String(spec)) => {
                let base = spec.split('@').next().unwrap_or_default();
                if base.contains(['/', '\\']) || base.ends_with(".toml") || base.starts_with('.') {
                    return Err(Error::invalid("sieve.policy", format!("`{spec}` is not a preset name")));
                }
                sieve_core::preset::resolve(spec, presets).map_err(|e| Error::invalid("sieve.policy", e.to_string()))?
            }
            Some(v @ Value::Object(_)) => {
                let file: sieve_core::policy::PolicyFile = from_value(v.clone(), "sieve.policy")?;
                let mut file = file;
                file.name.get_or_insert_with(|| "inline".to_string());
                file.validate().map_err(|e| Error::invalid("sieve.policy", e.to_string()))?
            }
            Some(_) => return Err(Error::invalid("sieve.policy", "a preset name or a policy object")),
        };
        match self.keep {
            None => Ok(policy),
            Some(keep) => {
                let mut out = sieve_core::preset::with_keep(&policy, keep)
                    .map_err(|e| Error::invalid("sieve.keep", e.to_string()))?;
                out.name = format!("{}@{keep}", policy.name);
                Ok(out)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn param(e: Error) -> Option<String> {
        match e {
            Error::Invalid { param, .. } => param,
            other => panic!("not an invalid request: {other}"),
        }
    }

    #[test]
    fn errors_name_the_field() {
        let chat = |body: &str| ChatRequest::parse(body.as_bytes());
        let user = r#""messages": [{"role": "user", "content": "hi"}]"#;
        assert_eq!(param(chat(&format!("{{{user}, \"foo\": 1}}")).unwrap_err()).as_deref(), Some("foo"));
        assert_eq!(param(chat("{}").unwrap_err()).as_deref(), Some("messages"));
        let bad_part = r#"{"messages": [{"role": "user", "content": 3}]}"#;
        assert!(param(chat(bad_part).unwrap_err()).is_some_and(|p| p.starts_with("messages[0]")));
        let unknown = format!("{{{user}, \"sieve\": {{\"policy\": \"snapkv\", \"kep\": 1}}}}");
        assert_eq!(param(chat(&unknown).unwrap_err()).as_deref(), Some("sieve.kep"));
        let r = chat(&format!("{{{user}, \"temperature\": 3}}")).unwrap();
        assert_eq!(param(r.common.settings("m", 16).unwrap_err()).as_deref(), Some("temperature"));
        let r = chat(&format!("{{{user}, \"n\": 2}}")).unwrap();
        assert_eq!(param(r.common.settings("m", 16).unwrap_err()).as_deref(), Some("n"));
        let r = chat(&format!("{{{user}, \"model\": \"other\"}}")).unwrap();
        assert!(matches!(r.common.settings("m", 16), Err(Error::UnknownModel(_))));
        let r = chat(&format!("{{{user}, \"max_tokens\": 0}}")).unwrap();
        assert_eq!(param(r.common.settings("m", 16).unwrap_err()).as_deref(), Some("max_tokens"));
        let r = chat(&format!("{{{user}, \"stop\": [\"a\", \"b\", \"c\", \"d\", \"e\"]}}")).unwrap();
        assert_eq!(param(r.common.settings("m", 16).unwrap_err()).as_deref(), Some("stop"));
        let c = CompletionRequest::parse(br#"{"prompt": "", "max_tokens": 4}"#).unwrap();
        assert_eq!(param(c.prompt_text().unwrap_err()).as_deref(), Some("prompt"));
        assert_eq!(
            param(CompletionRequest::parse(br#"{"prompt": "x", "echo": true}"#).unwrap_err()).as_deref(),
            Some("echo")
        );
    }

    #[test]
    fn requests_choose_presets_by_name_only() {
        let presets = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs");
        let default = sieve_core::Policy::none();
        let opts = |v: Value| -> SieveOptions { serde_json::from_value(v).unwrap() };
        let p = opts(serde_json::json!({"policy": "snapkv", "keep": 0.25})).policy(&default, &presets).unwrap();
        assert_eq!(p.name, "snapkv@0.25");
        assert!(p.kv.is_some());
        for spec in ["../configs/snapkv", "/etc/passwd", "snapkv.toml", "nosuchpreset"] {
            let e = opts(serde_json::json!({"policy": spec})).policy(&default, &presets).unwrap_err();
            assert_eq!(param(e).as_deref(), Some("sieve.policy"), "{spec}");
        }
        let inline = serde_json::json!({"policy": {"kv": {"keep": 0.5, "scorer": {"kind": "knorm"}}}});
        assert!(opts(inline).policy(&default, &presets).unwrap().kv.is_some());
        let e = opts(serde_json::json!({"keep": 2.0})).policy(&default, &presets).unwrap_err();
        assert_eq!(param(e).as_deref(), Some("sieve.keep"));
        let bogus = serde_json::json!({"policy": {"kv": {"keep": 0.5, "bogus": 1}}});
        let e = opts(bogus).policy(&default, &presets).unwrap_err();
        assert_eq!(param(e).as_deref(), Some("sieve.policy.kv.bogus"));
    }
}
