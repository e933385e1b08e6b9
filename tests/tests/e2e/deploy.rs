//! The deployment files in `deploy/`: what can be checked without a cluster. Every
//! YAML file parses; every TENANTRY_*/QDRANT_* name any deployment file mentions is a
//! variable the binaries read (`ALL_ENV_VARS`); the Kubernetes manifests hold what the
//! operations guide promises; KEDA scales on this fleet's jobs queue.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use tenantry::broker::Topology;
use tenantry::config::{ALL_ENV_VARS, DEFAULT_QUEUE_PREFIX};
use yaml_rust2::{Yaml, YamlLoader};

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

fn files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files(&path, out);
        } else {
            out.push(path);
        }
    }
}

/// Every `TENANTRY_…` or `QDRANT_…` word in a text.
fn env_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for prefix in ["TENANTRY_", "QDRANT_"] {
        let mut from = 0;
        while let Some(at) = text[from..].find(prefix) {
            let start = from + at;
            let boundary = text[..start]
                .chars()
                .next_back()
                .is_none_or(|c| !(c.is_ascii_alphanumeric() || c == '_'));
            let end = text[start..]
                .find(|c: char| !(c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_'))
                .map_or(text.len(), |e| start + e);
            if boundary {
                names.insert(text[start..end].to_owned());
            }
            from = end.max(start + 1);
        }
    }
    names
}

fn get<'a>(doc: &'a Yaml, path: &[&str]) -> &'a Yaml {
    path.iter().fold(doc, |node, key| &node[*key])
}

fn str_of<'a>(doc: &'a Yaml, path: &[&str]) -> &'a str {
    get(doc, path).as_str().unwrap_or_default()
}

#[test]
fn deployment_files_parse_and_set_only_variables_the_binaries_read() {
    let mut all = Vec::new();
    files(&deploy_dir(), &mut all);
    let yaml: Vec<&PathBuf> = all
        .iter()
        .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
        .collect();
    assert!(yaml.len() >= 7, "{yaml:?}");
    for name in [
        "Dockerfile",
        "tenantry-dispatcher.service",
        "tenantry-worker@.service",
    ] {
        assert!(
            all.iter().any(|p| p.ends_with(name)),
            "deploy/ lacks {name}"
        );
    }

    let mut seen = BTreeSet::new();
    for path in &all {
        let text = std::fs::read_to_string(path).unwrap();
        for name in env_names(&text) {
            assert!(
                ALL_ENV_VARS.contains(&name.as_str()),
                "{} mentions {name}, which no binary reads (not in config::ALL_ENV_VARS)",
                path.display()
            );
            seen.insert(name);
        }
    }
    // The secrets and the fleet's addresses are set somewhere.
    for needed in [
        "TENANTRY_DATABASE_URL",
        "TENANTRY_AMQP_URL",
        "TENANTRY_ADMIN_TOKEN",
        "TENANTRY_SIGNING_SECRET",
        "TENANTRY_METRICS_ADDR",
        "QDRANT_URL",
    ] {
        assert!(seen.contains(needed), "no deployment file sets {needed}");
    }

    // Every YAML document parses; collect the Kubernetes objects.
    let mut kinds = Vec::new();
    let mut k8s_docs = Vec::new();
    for path in &yaml {
        let text = std::fs::read_to_string(path).unwrap();
        let docs = YamlLoader::load_from_str(&text)
            .unwrap_or_else(|e| panic!("{} does not parse: {e}", path.display()));
        assert!(!docs.is_empty(), "{} is empty", path.display());
        if path.parent().is_some_and(|p| p.ends_with("k8s")) {
            for doc in docs {
                let kind = str_of(&doc, &["kind"]).to_owned();
                assert!(
                    !str_of(&doc, &["apiVersion"]).is_empty(),
                    "{}",
                    path.display()
                );
                assert!(
                    !str_of(&doc, &["metadata", "name"]).is_empty(),
                    "{}",
                    path.display()
                );
                kinds.push(kind);
                k8s_docs.push(doc);
            }
        }
    }
    for kind in [
        "Deployment",
        "Service",
        "ScaledObject",
        "PodDisruptionBudget",
        "ConfigMap",
        "Secret",
    ] {
        assert!(
            kinds.iter().any(|k| k == kind),
            "no {kind} in deploy/k8s: {kinds:?}"
        );
    }
    assert_eq!(kinds.iter().filter(|k| *k == "Deployment").count(), 2);

    // Environment from ConfigMap and Secret: the names referenced exist, and the
    // keys they carry are variables the binaries read.
    let named = |kind: &str| -> Vec<&Yaml> {
        k8s_docs
            .iter()
            .filter(|d| str_of(d, &["kind"]) == kind)
            .collect()
    };
    let names_of = |kind: &str| -> BTreeSet<String> {
        named(kind)
            .iter()
            .map(|d| str_of(d, &["metadata", "name"]).to_owned())
            .collect()
    };
    let (config_maps, secrets) = (names_of("ConfigMap"), names_of("Secret"));
    for cm in named("ConfigMap") {
        for key in get(cm, &["data"]).as_hash().unwrap().keys() {
            let key = key.as_str().unwrap();
            assert!(ALL_ENV_VARS.contains(&key), "ConfigMap key {key}");
        }
    }
    for deployment in named("Deployment") {
        let containers = get(deployment, &["spec", "template", "spec", "containers"])
            .as_vec()
            .unwrap();
        for container in containers {
            let env_from = container["envFrom"].as_vec().expect("envFrom");
            for source in env_from {
                if let Some(name) = source["configMapRef"]["name"].as_str() {
                    assert!(config_maps.contains(name), "unknown ConfigMap {name}");
                }
                if let Some(name) = source["secretRef"]["name"].as_str() {
                    assert!(secrets.contains(name), "unknown Secret {name}");
                }
            }
            for var in container["env"].as_vec().into_iter().flatten() {
                let name = var["name"].as_str().unwrap();
                assert!(ALL_ENV_VARS.contains(&name), "env {name}");
            }
        }
    }

    // KEDA scales the worker Deployment on this fleet's jobs queue.
    let scaled = named("ScaledObject")[0];
    let target = str_of(scaled, &["spec", "scaleTargetRef", "name"]);
    assert!(
        named("Deployment")
            .iter()
            .any(|d| str_of(d, &["metadata", "name"]) == target && target.contains("worker")),
        "ScaledObject targets {target}"
    );
    let trigger = &get(scaled, &["spec", "triggers"])[0];
    assert_eq!(trigger["type"].as_str(), Some("rabbitmq"));
    assert_eq!(
        trigger["metadata"]["queueName"].as_str(),
        Some(Topology::new(DEFAULT_QUEUE_PREFIX).jobs_queue().as_str())
    );
    assert_eq!(trigger["metadata"]["mode"].as_str(), Some("QueueLength"));

    // Compose: the broker with its management plugin, and the whole fleet.
    let compose = std::fs::read_to_string(deploy_dir().join("compose.yaml")).unwrap();
    let compose = &YamlLoader::load_from_str(&compose).unwrap()[0];
    let services = compose["services"].as_hash().unwrap();
    for service in ["rabbitmq", "postgres", "qdrant", "dispatcher", "worker"] {
        assert!(
            services.contains_key(&Yaml::String(service.into())),
            "compose lacks {service}"
        );
    }
    assert!(str_of(compose, &["services", "rabbitmq", "image"]).contains("management"));
}

#[test]
fn env_names_are_found_in_any_syntax() {
    let text = "A: ${TENANTRY_ADMIN_TOKEN:?x}\nEnvironment=TENANTRY_DATA_DIR=/x\n- name: QDRANT_URL\nMY_TENANTRY_X";
    let found: Vec<String> = env_names(text).into_iter().collect();
    assert_eq!(
        found,
        ["QDRANT_URL", "TENANTRY_ADMIN_TOKEN", "TENANTRY_DATA_DIR"]
    );
}
