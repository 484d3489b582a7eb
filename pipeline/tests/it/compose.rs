//! docker-compose.yml and the Dockerfile cannot run here (no Docker engine,
//! no image pulls): these tests read them as Compose and Docker would and
//! check what broke the stack before (data dirs vs volumes, read-only mounts
//! an entrypoint writes to, listeners the host cannot reach, commands the
//! binary lacks). stack.rs runs the notiflow services themselves.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use yaml_rust2::{Yaml, YamlLoader};

const COMPOSE: &str = include_str!("../../../docker-compose.yml");
const DOCKERFILE: &str = include_str!("../../../Dockerfile");
const README: &str = include_str!("../../../README.md");
const ENV_EXAMPLE: &str = include_str!("../../../.env.example");
const PROMETHEUS: &str = include_str!("../../../dashboards/prometheus/prometheus.yml");

pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// One compose service, `<<` merge keys applied.
#[derive(Debug, Clone)]
pub struct Service {
    pub name: String,
    pub built_here: bool,
    pub image: String,
    pub command: Vec<String>,
    /// As written (`${VAR...}` not yet substituted).
    pub environment: BTreeMap<String, String>,
    pub volumes: Vec<String>,
    pub profiles: Vec<String>,
    /// The healthcheck's `test` (empty: none or disabled).
    pub healthcheck: Vec<String>,
    pub restart: String,
    pub ports: Vec<String>,
    pub depends_on: Vec<String>,
}

impl Service {
    /// A one-shot job (runs to the end), not a server.
    pub fn one_shot(&self) -> bool {
        self.restart == "no"
    }

    /// (source, target, read-only) of each volume.
    pub fn mounts(&self) -> Vec<(String, String, bool)> {
        self.volumes
            .iter()
            .map(|v| {
                let parts: Vec<&str> = v.split(':').collect();
                (parts[0].to_string(), parts[1].to_string(), parts.get(2) == Some(&"ro"))
            })
            .collect()
    }
}

fn text(yaml: &Yaml) -> String {
    match yaml {
        Yaml::String(s) => s.clone(),
        Yaml::Integer(i) => i.to_string(),
        Yaml::Boolean(b) => b.to_string(),
        Yaml::Real(r) => r.clone(),
        _ => String::new(),
    }
}

fn texts(yaml: &Yaml) -> Vec<String> {
    match yaml {
        Yaml::Array(items) => items.iter().map(text).collect(),
        Yaml::Hash(map) => map.keys().map(text).collect(),
        Yaml::BadValue | Yaml::Null => Vec::new(),
        other => vec![text(other)],
    }
}

/// A mapping with its `<<` merge key applied (keys of the mapping win).
fn merged(yaml: &Yaml) -> yaml_rust2::yaml::Hash {
    let map = yaml.as_hash().expect("a mapping").clone();
    let mut out = map.get(&Yaml::String("<<".into())).and_then(Yaml::as_hash).cloned().unwrap_or_default();
    for (k, v) in map {
        if k.as_str() != Some("<<") {
            out.insert(k, v);
        }
    }
    out
}

pub fn compose() -> Yaml {
    YamlLoader::load_from_str(COMPOSE).expect("docker-compose.yml is YAML").remove(0)
}

pub fn services() -> Vec<Service> {
    let doc = compose();
    let services = doc["services"].as_hash().expect("services map");
    services
        .iter()
        .map(|(name, body)| {
            let body = Yaml::Hash(merged(body));
            let environment = match &body["environment"] {
                Yaml::Hash(map) => map.iter().map(|(k, v)| (text(k), text(v))).collect(),
                Yaml::Array(items) => items.iter().map(text).filter_map(|kv| kv.split_once('=').map(|(k, v)| (k.to_string(), v.to_string()))).collect(),
                _ => BTreeMap::new(),
            };
            let healthcheck = if body["healthcheck"]["disable"].as_bool() == Some(true) { Vec::new() } else { texts(&body["healthcheck"]["test"]) };
            Service {
                name: text(name),
                built_here: !body["build"].is_badvalue(),
                image: text(&body["image"]),
                command: texts(&body["command"]),
                environment,
                volumes: texts(&body["volumes"]),
                profiles: texts(&body["profiles"]),
                healthcheck,
                restart: text(&body["restart"]),
                ports: texts(&body["ports"]),
                depends_on: texts(&body["depends_on"]),
            }
        })
        .collect()
}

pub fn service(name: &str) -> Service {
    services().into_iter().find(|s| s.name == name).unwrap_or_else(|| panic!("docker-compose.yml has no service {name}"))
}

/// `${NAME}`, `${NAME:-default}` and `${NAME:?message}` as Compose substitutes them.
pub fn interpolate(value: &str, vars: &BTreeMap<String, String>) -> Result<String, String> {
    let mut out = String::new();
    let mut rest = value;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let end = rest[start..].find('}').ok_or_else(|| format!("unclosed ${{ in {value}"))? + start;
        let expr = &rest[start + 2..end];
        let (name, fallback) = match expr.split_once(":-") {
            Some((n, d)) => (n, Some(Ok(d.to_string()))),
            None => match expr.split_once(":?") {
                Some((n, m)) => (n, Some(Err(m.to_string()))),
                None => (expr, None),
            },
        };
        match (vars.get(name).filter(|v| !v.is_empty()), fallback) {
            (Some(v), _) => out.push_str(v),
            (None, Some(Ok(default))) => out.push_str(&default),
            (None, Some(Err(message))) => return Err(format!("{name}: {message}")),
            (None, None) => {}
        }
        rest = &rest[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// The Dockerfile's last stage: what it copies where, its ENV, WORKDIR and RUN lines.
#[derive(Debug, Default)]
pub struct Image {
    /// (from stage or "" for the build context, source, destination).
    pub copies: Vec<(String, String, String)>,
    pub env: BTreeMap<String, String>,
    pub workdir: String,
    pub runs: Vec<String>,
}

pub fn image() -> Image {
    // Continuation lines joined, comments dropped.
    let joined = DOCKERFILE.lines().filter(|l| !l.trim_start().starts_with('#')).collect::<Vec<_>>().join("\n").replace("\\\n", " ");
    let last_stage = joined.rsplit("\nFROM ").next().expect("a FROM line");
    let mut image = Image::default();
    for line in last_stage.lines().map(str::trim) {
        let (instruction, args) = line.split_once(' ').unwrap_or((line, ""));
        let words: Vec<&str> = args.split_whitespace().collect();
        match instruction {
            "COPY" => {
                let from = words.iter().find_map(|w| w.strip_prefix("--from=")).unwrap_or("").to_string();
                let paths: Vec<&str> = words.iter().filter(|w| !w.starts_with("--")).copied().collect();
                assert_eq!(paths.len(), 2, "one source per COPY (the stack test copies them): {line}");
                image.copies.push((from, paths[0].to_string(), paths[1].to_string()));
            }
            "ENV" => {
                for pair in words {
                    let (k, v) = pair.split_once('=').expect("ENV K=V");
                    image.env.insert(k.to_string(), v.to_string());
                }
            }
            "WORKDIR" => image.workdir = args.trim().to_string(),
            "RUN" => image.runs.push(args.to_string()),
            _ => {}
        }
    }
    image
}

/// Directories the image creates owned by its user (`install -d -o 10001 ...`).
fn dirs_owned_by_image_user(image: &Image) -> Vec<String> {
    let mut dirs = Vec::new();
    for run in &image.runs {
        for command in run.split("&&") {
            let words: Vec<&str> = command.split_whitespace().collect();
            if words.first() == Some(&"install") && words.contains(&"-d") && words.windows(2).any(|w| w == ["-o", "10001"]) {
                let mut skip = false;
                for word in &words[1..] {
                    if skip {
                        skip = false;
                    } else if ["-o", "-g", "-m"].contains(word) {
                        skip = true;
                    } else if word.starts_with('/') {
                        dirs.push(word.to_string());
                    }
                }
            }
        }
    }
    dirs
}

/// Subcommand words of a compose command (up to the first option or path).
pub fn subcommand(command: &[String]) -> Vec<String> {
    command.iter().take_while(|w| !w.starts_with('-') && !w.starts_with('/')).cloned().collect()
}

/// Service names in the README's "Production stack" table: first-column `code`.
fn readme_services() -> Vec<String> {
    let section = README.split("## Production stack").nth(1).expect("README has a Production stack section");
    let section = section.split("\n## ").next().unwrap();
    section.lines().filter(|l| l.starts_with("| `")).map(|l| l.trim_start_matches("| `").split('`').next().unwrap().to_string()).collect()
}

fn compose_config() -> notiflow::config::Config {
    notiflow::config::Config::load(&repo().join("config/notiflow.compose.toml")).expect("config/notiflow.compose.toml is a valid notiflow config")
}

#[test]
fn compose_has_every_service_the_readme_names_and_each_command_exists_in_the_binary() {
    let services = services();
    let names: Vec<&str> = services.iter().map(|s| s.name.as_str()).collect();
    let named = readme_services();
    for name in &named {
        assert!(names.contains(&name.as_str()), "README names service {name:?}; compose has {names:?}");
    }
    for wanted in ["notiflow", "deliver", "receipts", "inbox", "gateway", "sink", "stand-ins", "kafka", "clickhouse", "grafana", "prometheus"] {
        assert!(named.iter().any(|n| n == wanted), "README's table lacks {wanted}");
    }
    for service in services.iter().filter(|s| s.built_here) {
        assert_eq!(service.image, "notiflow:local", "{}: one image for every notiflow service", service.name);
        let words = subcommand(&service.command);
        assert!(!words.is_empty(), "{}: no command", service.name);
        let help = std::process::Command::new(env!("CARGO_BIN_EXE_notiflow")).args(&words).arg("--help").output().unwrap();
        assert!(help.status.success(), "{}: `notiflow {}` is not a command: {}", service.name, words.join(" "), String::from_utf8_lossy(&help.stderr));
    }
}

#[test]
fn every_service_has_a_healthcheck_and_waits_for_what_it_needs() {
    let config = compose_config();
    let metrics_port = config.metrics.listen.rsplit(':').next().unwrap().to_string();
    for service in services() {
        if service.one_shot() {
            continue;
        }
        assert!(!service.healthcheck.is_empty(), "{} has no healthcheck", service.name);
        if service.built_here {
            // Servers that talk to Kafka wait for it to be healthy (the stand-ins talk to nobody).
            if service.name != "stand-ins" {
                assert!(service.depends_on.contains(&"kafka".to_string()), "{} does not wait for kafka", service.name);
            }
            assert_eq!(service.healthcheck[..3], ["CMD", "notiflow", "probe"], "{}", service.name);
            assert_eq!(service.healthcheck[3], format!("http://127.0.0.1:{metrics_port}/readyz"), "{}", service.name);
        }
    }
}

#[test]
fn named_volumes_are_where_each_image_keeps_its_data_and_writable_by_its_user() {
    let doc = compose();
    let declared: Vec<String> = texts(&doc["volumes"]);
    let image = image();
    let owned = dirs_owned_by_image_user(&image);
    assert!(image.runs.iter().any(|r| r.contains("--uid 10001")) && DOCKERFILE.contains("USER 10001"), "the image runs as uid 10001");
    let config = compose_config();
    let archive = config.archive.dir.to_string_lossy().to_string();
    for service in services() {
        for (source, target, read_only) in service.mounts() {
            if source.starts_with("./") {
                assert!(repo().join(&source).exists(), "{}: bind source {source} is not in the repository (Docker would create a directory)", service.name);
                continue;
            }
            assert!(declared.contains(&source), "{}: volume {source} is not declared", service.name);
            assert!(!read_only, "{}: named volume {source} mounted read-only", service.name);
            if service.built_here {
                assert!(owned.contains(&target), "{}: {target} is not created for uid 10001 in the image (named volumes copy its owner): {owned:?}", service.name);
            }
        }
    }
    // Where each store writes is on its volume.
    let kafka = service("kafka");
    let log_dirs = &kafka.environment["KAFKA_LOG_DIRS"];
    assert!(kafka.mounts().iter().any(|(_, target, _)| target == log_dirs), "Kafka writes to {log_dirs}, not to its volume");
    let sink = service("sink");
    assert!(sink.mounts().iter().any(|(s, target, _)| !s.starts_with("./") && archive.starts_with(target.as_str())), "the sink archives to {archive}, not to a volume");
    let clickhouse = service("clickhouse");
    assert!(clickhouse.mounts().iter().any(|(_, target, _)| target == "/var/lib/clickhouse"));
    assert!(sink.depends_on.contains(&"clickhouse".to_string()), "the sink does not wait for ClickHouse");
}

#[test]
fn no_read_only_mount_covers_a_folder_an_entrypoint_writes() {
    // The ClickHouse entrypoint writes users.d/default-user.xml (CLICKHOUSE_USER/PASSWORD) and config.d;
    // Grafana writes under /var/lib/grafana.
    let written = ["/etc/clickhouse-server/users.d", "/etc/clickhouse-server/config.d", "/var/lib/grafana"];
    for service in services() {
        for (_, target, read_only) in service.mounts() {
            assert!(!(read_only && written.contains(&target.as_str())), "{}: {target} is read-only but its entrypoint writes there", service.name);
        }
    }
    // The database the entrypoint creates is the one notiflow writes to (the sink creates the tables in it).
    let clickhouse = service("clickhouse");
    let config = compose_config();
    let ours = config.clickhouse.as_ref().expect("[clickhouse]");
    assert_eq!(clickhouse.environment["CLICKHOUSE_DB"], ours.database);
    assert_eq!(clickhouse.environment["CLICKHOUSE_USER"], ours.user);
    assert!(ours.create_tables, "nothing else creates the tables in {}", ours.database);
    assert!(!clickhouse.mounts().iter().any(|(_, t, _)| t == "/docker-entrypoint-initdb.d"), "initdb scripts run in `default`, not {}", ours.database);
}

#[test]
fn kafka_listeners_reach_containers_and_the_host() {
    let kafka = service("kafka");
    let env = &kafka.environment;
    let listeners: BTreeMap<String, String> =
        env["KAFKA_LISTENERS"].split(',').map(|l| l.split_once("://").map(|(n, a)| (n.to_string(), a.to_string())).unwrap()).collect();
    let advertised: BTreeMap<String, String> =
        env["KAFKA_ADVERTISED_LISTENERS"].split(',').map(|l| l.split_once("://").map(|(n, a)| (n.to_string(), a.to_string())).unwrap()).collect();
    let protocols = &env["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"];
    for (name, address) in &advertised {
        let port = address.rsplit(':').next().unwrap();
        assert_eq!(listeners[name].rsplit(':').next().unwrap(), port, "{name} advertises {address} but listens on {}", listeners[name]);
        assert!(protocols.contains(&format!("{name}:")), "{name} has no security protocol");
    }
    // Containers reach the address the compose config bootstraps from...
    let bootstrap = compose_config().kafka.expect("[kafka]").bootstrap_servers;
    assert!(advertised.values().any(|a| *a == bootstrap), "containers bootstrap from {bootstrap}; Kafka advertises {advertised:?}");
    // ...and producers on the host reach 127.0.0.1:9092 (docs/producers.md), published to the host.
    let host = advertised.iter().find(|(_, a)| a.starts_with("127.0.0.1:") || a.starts_with("localhost:")).expect("a listener advertised for the host");
    let host_port = host.1.rsplit(':').next().unwrap();
    assert!(kafka.ports.iter().any(|p| p.ends_with(&format!(":{host_port}:{host_port}")) || p == &format!("{host_port}:{host_port}")), "{host_port} not published: {:?}", kafka.ports);
    assert!(include_str!("../../../docs/producers.md").contains(&format!("127.0.0.1:{host_port}")));
    assert_eq!(env.get("KAFKA_INTER_BROKER_LISTENER_NAME").map(String::as_str), Some(bootstrap_listener(&advertised, &bootstrap)));
}

fn bootstrap_listener<'a>(advertised: &'a BTreeMap<String, String>, bootstrap: &str) -> &'a str {
    advertised.iter().find(|(_, a)| *a == bootstrap).map(|(n, _)| n.as_str()).unwrap()
}

#[test]
fn every_variable_compose_needs_is_in_env_example_and_prometheus_scrapes_every_server() {
    let example: BTreeMap<String, String> =
        ENV_EXAMPLE.lines().filter(|l| !l.starts_with('#')).filter_map(|l| l.split_once('=')).map(|(k, v)| (k.to_string(), v.to_string())).collect();
    for service in services() {
        for (name, value) in &service.environment {
            interpolate(value, &example).unwrap_or_else(|e| panic!("{}: {name}: {e} (not in .env.example)", service.name));
        }
    }
    let config = compose_config();
    let metrics_port = config.metrics.listen.rsplit(':').next().unwrap().to_string();
    for service in services().into_iter().filter(|s| s.built_here && !s.one_shot() && s.profiles.is_empty()) {
        assert!(PROMETHEUS.contains(&format!("\"{}:{metrics_port}\"", service.name)), "prometheus.yml does not scrape {}", service.name);
    }
}

#[test]
fn interpolation_follows_compose() {
    let vars: BTreeMap<String, String> = [("A".to_string(), "1".to_string()), ("E".to_string(), String::new())].into();
    assert_eq!(interpolate("x${A}y", &vars).unwrap(), "x1y");
    assert_eq!(interpolate("${B:-d}", &vars).unwrap(), "d");
    assert_eq!(interpolate("${E:-d}", &vars).unwrap(), "d");
    assert!(interpolate("${B:?set B}", &vars).unwrap_err().contains("set B"));
}
