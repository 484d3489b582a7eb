/*
[dependencies]
minijinja = { version = "2", default-features = false, features = ["builtins", "fuel", "macros", "multi_template", "serde"] }
serde_json = "1"
*/
//! `render_template(template, params_json, locale, format)`: renders a
//! minijinja (Jinja2) template with the request's params.
//!
//! Safe for templates written by tenants:
//! - a variable the params do not define is an error, never an empty string
//!   (a half-rendered message must not be sent);
//! - fuel bounds the work one render may do (a loop over a huge range stops)
//!   and a recursion limit bounds nested macros/includes;
//! - `format = 'html'` auto-escapes every substituted value (HTML e-mail);
//!   any other format (text, markdown, null) substitutes values as they are.
//!
//! `locale` is visible to the template as `locale` (e.g. to pick a greeting).
//! An error (bad syntax, missing variable, params not a JSON object, fuel
//! exhausted) fails the row: the engine dead-letters the request with reason
//! `template_error` (the line below) and this UDF's name; the process log has
//! what went wrong.

// notiflow: dead_letter_reason = template_error

use std::cell::RefCell;
use std::collections::HashMap;

use arroyo_udf_plugin::udf;
use minijinja::{AutoEscape, Environment, UndefinedBehavior, Value};

/// Instructions one render may execute: generous for real messages, small
/// enough that a runaway loop stops within milliseconds.
const FUEL: u64 = 50_000;
/// Nesting depth of macros, includes and nested expressions.
const RECURSION_LIMIT: usize = 32;
/// Longest rendered text accepted (bytes).
const MAX_OUTPUT: usize = 256 * 1024;

fn environment(html: bool) -> Environment<'static> {
    let mut env = Environment::new();
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    env.set_fuel(Some(FUEL));
    env.set_recursion_limit(RECURSION_LIMIT);
    env.set_auto_escape_callback(move |_| if html { AutoEscape::Html } else { AutoEscape::None });
    env
}

/// Templates compiled at most this many at a time per thread (then the cache starts over).
const CACHED_TEMPLATES: usize = 1024;

/// Compiled templates by their source text: a template is parsed once, not
/// once per row (the catalog changes rarely; a new version is a new source).
struct Compiled {
    /// Text and HTML environments (auto-escape differs).
    envs: [Environment<'static>; 2],
    /// Template source -> its name in the environment, per format.
    names: [HashMap<String, String>; 2],
}

impl Compiled {
    fn new() -> Self {
        Compiled { envs: [environment(false), environment(true)], names: [HashMap::new(), HashMap::new()] }
    }

    fn render(&mut self, source: &str, html: bool, params: Value) -> Result<String, String> {
        let i = usize::from(html);
        if !self.names[i].contains_key(source) {
            if self.names[i].len() >= CACHED_TEMPLATES {
                self.envs[i] = environment(html);
                self.names[i].clear();
            }
            let name = format!("t{}", self.names[i].len());
            self.envs[i].add_template_owned(name.clone(), source.to_string()).map_err(|e| format!("template error: {e:#}"))?;
            self.names[i].insert(source.to_string(), name);
        }
        let template = self.envs[i].get_template(&self.names[i][source]).map_err(|e| format!("template error: {e:#}"))?;
        template.render(params).map_err(|e| format!("render error: {e:#}"))
    }
}

thread_local! {
    static COMPILED: RefCell<Compiled> = RefCell::new(Compiled::new());
}

/// The rendering itself, with a typed error (the `#[udf]` wrapper turns it into a row failure).
pub fn try_render(template: &str, params_json: &str, locale: Option<&str>, format: Option<&str>) -> Result<String, String> {
    let params: serde_json::Value = serde_json::from_str(params_json).map_err(|e| format!("params are not JSON: {e}"))?;
    let serde_json::Value::Object(mut params) = params else {
        return Err("params must be a JSON object".into());
    };
    if let Some(locale) = locale {
        params.entry("locale").or_insert_with(|| serde_json::Value::String(locale.to_string()));
    }
    let html = format.is_some_and(|f| f.eq_ignore_ascii_case("html"));
    let rendered = COMPILED.with(|cache| cache.borrow_mut().render(template, html, Value::from_serialize(&params)))?;
    if rendered.len() > MAX_OUTPUT {
        return Err(format!("rendered text is {} bytes, more than the {MAX_OUTPUT} allowed", rendered.len()));
    }
    Ok(rendered)
}

#[udf]
fn render_template(template: &str, params_json: &str, locale: Option<&str>, format: Option<&str>) -> String {
    match try_render(template, params_json, locale, format) {
        Ok(text) => text,
        // arroyo-udf-plugin 0.2 has no error return: a panic fails the row.
        Err(message) => panic!("render_template: {message}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_params_and_locale() {
        let out = try_render("{% if locale == 'zh-CN' %}您好{% else %}Hello{% endif %} {{ name }}, code {{ code }}", r#"{"name":"Li","code":"4711"}"#, Some("zh-CN"), None);
        assert_eq!(out.unwrap(), "您好 Li, code 4711");
        assert_eq!(render_template("{{ n + 1 }}", r#"{"n": 41}"#, None, Some("text")), "42");
    }

    #[test]
    fn a_cached_template_renders_each_rows_params() {
        for (name, expected) in [("Ann", "Hi Ann"), ("Bo", "Hi Bo")] {
            assert_eq!(try_render("Hi {{ name }}", &format!(r#"{{"name":"{name}"}}"#), None, None).unwrap(), expected);
        }
        // The same source in HTML is compiled apart: it escapes.
        assert_eq!(try_render("Hi {{ name }}", r#"{"name":"<b>"}"#, None, Some("html")).unwrap(), "Hi &lt;b&gt;");
        assert_eq!(try_render("Hi {{ name }}", r#"{"name":"<b>"}"#, None, None).unwrap(), "Hi <b>");
        // A broken template is never cached as good.
        for _ in 0..2 {
            assert!(try_render("{{ oops", "{}", None, None).unwrap_err().contains("template error"));
        }
    }

    #[test]
    fn the_cache_starts_over_when_full() {
        for i in 0..CACHED_TEMPLATES + 5 {
            assert_eq!(try_render(&format!("{i}-{{{{ x }}}}"), r#"{"x":1}"#, None, None).unwrap(), format!("{i}-1"));
        }
        assert_eq!(try_render("0-{{ x }}", r#"{"x":2}"#, None, None).unwrap(), "0-2");
    }

    #[test]
    fn a_missing_variable_is_an_error() {
        let err = try_render("Hello {{ name }}", "{}", None, None).unwrap_err();
        assert!(err.contains("undefined"), "{err}");
        let err = try_render("{{ user.name }}", r#"{"user": {}}"#, None, None).unwrap_err();
        assert!(err.contains("undefined"), "{err}");
    }

    #[test]
    fn a_looping_template_runs_out_of_fuel() {
        let err = try_render("{% for i in range(10000) %}{% for j in range(10000) %}{{ j }}{% endfor %}{% endfor %}", "{}", None, None).unwrap_err();
        assert!(err.contains("fuel"), "{err}");
    }

    #[test]
    fn deep_recursion_is_stopped() {
        let template = "{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}";
        let err = try_render(template, "{}", None, None).unwrap_err();
        assert!(err.contains("recursion") || err.contains("fuel"), "{err}");
    }

    #[test]
    fn html_format_escapes_values_and_text_does_not() {
        let params = r#"{"name": "<script>x</script>"}"#;
        assert_eq!(try_render("<p>{{ name }}</p>", params, None, Some("html")).unwrap(), "<p>&lt;script&gt;x&lt;&#x2f;script&gt;</p>");
        assert_eq!(try_render("{{ name }}", params, None, Some("text")).unwrap(), "<script>x</script>");
    }

    #[test]
    fn bad_input_is_an_error_not_a_message() {
        assert!(try_render("{{ name", r#"{"name":"x"}"#, None, None).unwrap_err().contains("template error"));
        assert!(try_render("hi", "[1,2]", None, None).unwrap_err().contains("JSON object"));
        assert!(try_render("hi", "not json", None, None).unwrap_err().contains("not JSON"));
        assert!(std::panic::catch_unwind(|| render_template("{{ x }}", "{}", None, None)).is_err());
    }
}
