//! Chat prompts from the model's own template: `tokenizer.chat_template`, a
//! Jinja template (Hugging Face's convention), rendered with minijinja in the
//! environment Hugging Face's `apply_chat_template` sets up: `trim_blocks`,
//! `lstrip_blocks`, loop controls, Python string methods (`.strip()`,
//! `.startswith()` ...), `raise_exception`, and the variables `messages`,
//! `add_generation_prompt`, `bos_token` and `eos_token`.

use anyhow::{Context, Result, anyhow, bail};
use minijinja::{Environment, Error, ErrorKind, Value, context};
use shardload_gguf::GgufFile;

/// The GGUF metadata key holding the chat template.
pub const CHAT_TEMPLATE_KEY: &str = "tokenizer.chat_template";

/// One turn of a conversation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    /// Who speaks: `system`, `user` or `assistant`.
    pub role: String,
    /// What they say.
    pub content: String,
}

impl Message {
    /// A message from `role` saying `content`.
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Message {
        Message {
            role: role.into(),
            content: content.into(),
        }
    }
}

/// A compiled chat template with the model's BOS and EOS texts.
pub struct ChatTemplate {
    env: Environment<'static>,
    source: String,
    bos_token: String,
    eos_token: String,
}

const NAME: &str = "chat_template";

impl ChatTemplate {
    /// The template of a GGUF model (`tokenizer.chat_template`), with
    /// `bos_token` and `eos_token` the texts of its BOS and EOS tokens (empty
    /// where the model has none). An error names the key when it is missing.
    pub fn from_gguf(file: &GgufFile) -> Result<ChatTemplate> {
        let architecture = file.get("general.architecture").and_then(|v| v.as_str());
        // An architecture whose GGUFs often lack a template brings its own.
        let fallback = architecture.and_then(crate::arch::default_chat_template);
        let source = match (file.get(CHAT_TEMPLATE_KEY), fallback) {
            (Some(value), _) => value
                .as_str()
                .ok_or_else(|| anyhow!("{CHAT_TEMPLATE_KEY} is not a string"))?,
            (None, Some(template)) => template,
            (None, None) => {
                bail!("the model has no chat template: its GGUF lacks the key {CHAT_TEMPLATE_KEY}")
            }
        };
        let token = |key: &str| -> String {
            let tokens = file.get("tokenizer.ggml.tokens").and_then(|v| v.as_array());
            file.get(key)
                .and_then(|v| v.as_u64())
                .and_then(|id| tokens?.get(usize::try_from(id).ok()?)?.as_str())
                .unwrap_or_default()
                .to_owned()
        };
        ChatTemplate::new(
            source,
            &token("tokenizer.ggml.bos_token_id"),
            &token("tokenizer.ggml.eos_token_id"),
        )
        .with_context(|| format!("the model's {CHAT_TEMPLATE_KEY}"))
    }

    /// The template's Jinja source (what llama-server's `/props` shows).
    pub fn source(&self) -> &str {
        &self.source
    }

    /// The text the template gets as `bos_token` (a browser renders the same).
    pub fn bos_token(&self) -> &str {
        &self.bos_token
    }

    /// The text the template gets as `eos_token`.
    pub fn eos_token(&self) -> &str {
        &self.eos_token
    }

    /// Compiles a template's source, with the texts of the BOS and EOS tokens.
    pub fn new(source: &str, bos_token: &str, eos_token: &str) -> Result<ChatTemplate> {
        let mut env = Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function(
            "raise_exception",
            |message: String| -> Result<Value, Error> {
                Err(Error::new(ErrorKind::InvalidOperation, message))
            },
        );
        env.add_template_owned(NAME, source.to_owned())
            .map_err(|e| anyhow!("cannot compile the chat template: {e:#}"))?;
        Ok(ChatTemplate {
            env,
            source: source.to_owned(),
            bos_token: bos_token.to_owned(),
            eos_token: eos_token.to_owned(),
        })
    }

    /// The prompt text for `messages`; with `add_generation_prompt`, it ends
    /// where the assistant's reply begins (`<|im_start|>assistant\n`).
    pub fn render(&self, messages: &[Message], add_generation_prompt: bool) -> Result<String> {
        let messages: Vec<Value> = messages
            .iter()
            .map(|m| context! { role => m.role, content => m.content })
            .collect();
        self.env
            .get_template(NAME)
            .and_then(|t| {
                t.render(context! {
                    messages,
                    add_generation_prompt,
                    bos_token => self.bos_token,
                    eos_token => self.eos_token,
                })
            })
            .map_err(|e| anyhow!("rendering the chat template: {e:#}"))
    }
}

impl ChatTemplate {
    /// The tokens of `messages` rendered with the generation prompt, special
    /// tokens parsed, BOS first where the model adds one and the template did
    /// not write it: the one way `chat` and `serve` turn a conversation into a prompt.
    pub fn prompt_tokens(
        &self,
        tokenizer: &shardload_tokenizer::Tokenizer,
        messages: &[Message],
    ) -> Result<Vec<u32>> {
        let prompt = self.render(messages, true)?;
        let mut tokens = tokenizer.encode(prompt.as_bytes(), false, true);
        if tokenizer.adds_bos()
            && let Some(bos) = tokenizer.bos()
            && tokens.first() != Some(&bos)
        {
            tokens.insert(0, bos);
        }
        Ok(tokens)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raise_exception_becomes_an_error_with_its_message() {
        let t = ChatTemplate::new(
            "{% if messages[0]['role'] != 'user' %}{{ raise_exception('users first') }}{% endif %}",
            "",
            "",
        )
        .unwrap();
        let error = t
            .render(&[Message::new("assistant", "x")], false)
            .unwrap_err();
        assert!(format!("{error:#}").contains("users first"), "{error:#}");
    }

    #[test]
    fn python_string_methods_and_loop_controls_work() {
        let t = ChatTemplate::new(
            "{% for m in messages %}{% if m.content.startswith('stop') %}{% break %}{% endif %}\
             [{{ m.content.strip() }}]{% endfor %}",
            "",
            "",
        )
        .unwrap();
        let messages = [
            Message::new("user", "  a "),
            Message::new("user", "b"),
            Message::new("user", "stop"),
            Message::new("user", "c"),
        ];
        assert_eq!(t.render(&messages, false).unwrap(), "[a][b]");
    }
}
