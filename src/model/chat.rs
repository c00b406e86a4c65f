//! Chat templates: turn a list of messages into the prompt text a model was trained on.
//!
//! Instruction-tuned models ship their own Jinja template (GGUF metadata
//! `tokenizer.chat_template`, or `chat_template` in a Hugging Face `tokenizer_config.json`).
//! pot renders it with minijinja, as Hugging Face's `apply_chat_template` does with Jinja2:
//! variables `messages`, `add_generation_prompt`, `bos_token`, `eos_token`, and the helper
//! `raise_exception`; Python string methods (`.strip()`, `.startswith()`, ...) through
//! minijinja-contrib's compatibility layer. Both `pot serve` (to answer chat requests) and
//! `pot audit` (to know what the endpoint's model saw) render through here, so they agree.

use serde::{Deserialize, Serialize};

use super::ModelError;

/// One chat message, as the OpenAI API sends it (text content only).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Message {
    /// `system`, `user`, `assistant` or `tool`.
    pub role: String,
    /// The text.
    pub content: String,
}

/// A model's chat template.
#[derive(Clone, Debug)]
pub struct ChatTemplate {
    source: String,
    /// Where it came from (for errors).
    origin: String,
    bos: String,
    eos: String,
}

impl ChatTemplate {
    /// A template with the text of the model's BOS and EOS tokens.
    pub fn new(source: String, origin: String, bos: String, eos: String) -> Self {
        Self {
            source,
            origin,
            bos,
            eos,
        }
    }

    /// The Jinja source.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// The prompt text for `messages`, ending with the assistant's turn opened.
    pub fn render(&self, messages: &[Message]) -> Result<String, ModelError> {
        let bad = |e: minijinja::Error| ModelError::Template {
            origin: self.origin.clone(),
            source: e,
        };
        let mut env = minijinja::Environment::new();
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function(
            "raise_exception",
            |msg: String| -> Result<String, minijinja::Error> {
                Err(minijinja::Error::new(
                    minijinja::ErrorKind::InvalidOperation,
                    msg,
                ))
            },
        );
        env.add_template("chat", &self.source).map_err(bad)?;
        let tmpl = env.get_template("chat").map_err(bad)?;
        tmpl.render(minijinja::context! {
            messages => messages,
            add_generation_prompt => true,
            bos_token => self.bos,
            eos_token => self.eos,
        })
        .map_err(bad)
    }

    /// The text of the BOS token (templates of models that want one write it themselves).
    pub fn bos(&self) -> &str {
        &self.bos
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(role: &str, content: &str) -> Message {
        Message {
            role: role.into(),
            content: content.into(),
        }
    }

    #[test]
    fn a_chatml_template_renders_like_jinja2() {
        // SmolLM2's template; the expected text is what transformers' apply_chat_template gives.
        let src = "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";
        let t = ChatTemplate::new(src.into(), "test".into(), String::new(), String::new());
        let out = t.render(&[msg("user", "Hi there")]).unwrap();
        assert_eq!(out, "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n");
    }

    #[test]
    fn python_string_methods_and_raise_exception_work() {
        let src = "{% if messages[0].role != 'user' %}{{ raise_exception('first message must be from the user') }}{% endif %}{{ bos_token }}{{ messages[0].content.strip() }}";
        let t = ChatTemplate::new(src.into(), "test".into(), "<s>".into(), "</s>".into());
        assert_eq!(t.render(&[msg("user", "  hi  ")]).unwrap(), "<s>hi");
        let err = t.render(&[msg("system", "x")]).unwrap_err().to_string();
        assert!(err.contains("first message must be from the user"), "{err}");
    }
}
