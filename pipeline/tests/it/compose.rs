//! docker-compose.yml cannot run here (no Docker engine): check that it parses
//! and that every service the README's production-stack table names is there.

use yaml_rust2::YamlLoader;

const COMPOSE: &str = include_str!("../../../docker-compose.yml");
const README: &str = include_str!("../../../README.md");

/// Service names in the README's "Production stack" table: first-column `code`.
fn readme_services() -> Vec<String> {
    let section = README.split("## Production stack").nth(1).expect("README has a Production stack section");
    let section = section.split("\n## ").next().unwrap();
    section
        .lines()
        .filter(|l| l.starts_with("| `"))
        .map(|l| l.trim_start_matches("| `").split('`').next().unwrap().to_string())
        .collect()
}

#[test]
fn compose_parses_and_has_every_service_the_readme_names() {
    let docs = YamlLoader::load_from_str(COMPOSE).expect("docker-compose.yml is YAML");
    let services = &docs[0]["services"];
    let names: Vec<String> =
        services.as_hash().expect("services map").keys().map(|k| k.as_str().unwrap().to_string()).collect();
    let named = readme_services();
    assert!(named.len() >= 4, "README names {named:?}");
    for name in &named {
        assert!(names.contains(name), "README names service {name:?}; compose has {names:?}");
        let service = &services[name.as_str()];
        assert!(service["image"].as_str().is_some() || !service["build"].is_badvalue(), "{name} has no image or build");
    }
    for (name, image) in [("kafka", "apache/kafka"), ("clickhouse", "clickhouse/clickhouse-server"), ("grafana", "grafana/grafana")] {
        let got = services[name]["image"].as_str().unwrap_or_default();
        assert!(got.starts_with(image), "{name} uses {got}");
    }
    // notiflow waits for its dependencies and gets its config from a file, its secrets from env.
    let notiflow = &services["notiflow"];
    assert!(!notiflow["depends_on"].is_badvalue());
    let command = format!("{:?}", notiflow["command"]);
    assert!(command.contains("run"), "{command}");
}
