//! `notiflow tenant analysts`: each registered tenant gets a database of its
//! own rows (materialized views over the shared tables,
//! dashboards/clickhouse/tenant/tenant_database.sql) and a read-only analyst
//! user allowed that database only (users.d XML from
//! dashboards/clickhouse/tenant/analyst_user.xml). Isolation is by database:
//! ClickHouse 18.16 has no row policies, and both it and current servers
//! enforce `allow_databases`.

use std::path::Path;

use anyhow::Context;

use crate::config::Config;

const TENANT_DATABASE: &str = include_str!("../../../dashboards/clickhouse/tenant/tenant_database.sql");
const ANALYST_USER: &str = include_str!("../../../dashboards/clickhouse/tenant/analyst_user.xml");

/// The tenant's database name: `<shared>_t_<tenant>`.
pub fn tenant_database(shared: &str, tenant: &str) -> String {
    format!("{shared}_t_{tenant}")
}

/// The environment variable that may hold a tenant analyst's password.
pub fn password_variable(tenant: &str) -> String {
    format!("NOTIFLOW_ANALYST_PASSWORD_{}", tenant.to_uppercase().replace('-', "_"))
}

/// The DDL of one tenant's database.
pub fn tenant_ddl(shared: &str, tenant: &str) -> String {
    TENANT_DATABASE
        .replace("{shared}", &format!("`{shared}`"))
        .replace("{own}", &format!("`{}`", tenant_database(shared, tenant)))
        .replace("{tenant}", tenant)
}

/// The users.d file for these (tenant, password) pairs.
pub fn users_xml(shared: &str, analysts: &[(String, String)], networks: &str) -> String {
    let mut xml = String::from(
        "<?xml version=\"1.0\"?>\n<!-- Written by `notiflow tenant analysts`; passwords are stored hashed. -->\n<yandex>\n    <users>\n",
    );
    for (tenant, password) in analysts {
        xml.push_str(
            &ANALYST_USER
                .replace("{tenant}", tenant)
                .replace("{password_sha256}", &crate::tenants::key_hash(password))
                .replace("{networks}", networks)
                .replace("{database}", &tenant_database(shared, tenant)),
        );
    }
    xml.push_str("    </users>\n</yandex>\n");
    xml
}

/// Creates every registered tenant's database and writes the users file.
/// Returns one line per tenant; passwords that had to be minted are in it (shown once).
pub async fn provision(config: &Config, users_file: &Path, networks: &str) -> anyhow::Result<Vec<String>> {
    let clickhouse = config.clickhouse.as_ref().context("notiflow tenant analysts needs [clickhouse] in the config")?;
    let client = clickhouse.client()?;
    let tenants = crate::tenants::admin::read(config).await?;
    anyhow::ensure!(!tenants.is_empty(), "the tenant registry is empty (`notiflow tenant put` first)");
    let mut analysts = Vec::new();
    let mut lines = Vec::new();
    for tenant in tenants.keys() {
        let ddl = tenant_ddl(&clickhouse.database, tenant);
        notiflow_clickhouse::apply_ddl(&client, "dashboards/clickhouse/tenant/tenant_database.sql", &ddl).await?;
        let variable = password_variable(tenant);
        let password = match std::env::var(&variable) {
            Ok(password) if password.len() >= 12 => {
                lines.push(format!(
                    "analyst_{tenant}: database {} (password from {variable})",
                    tenant_database(&clickhouse.database, tenant)
                ));
                password
            }
            Ok(_) => anyhow::bail!("{variable} must hold at least 12 characters"),
            Err(_) => {
                let password = crate::tenants::random_hex(16)?;
                lines.push(format!(
                    "analyst_{tenant}: database {} password {password} (minted; shown once; set {variable} to choose one)",
                    tenant_database(&clickhouse.database, tenant)
                ));
                password
            }
        };
        analysts.push((tenant.clone(), password));
    }
    std::fs::write(users_file, users_xml(&clickhouse.database, &analysts, networks))
        .with_context(|| format!("writing {}", users_file.display()))?;
    Ok(lines)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ddl_and_users_are_filled_in_per_tenant() {
        let ddl = tenant_ddl("notiflow", "a-1");
        assert!(ddl.contains("CREATE DATABASE IF NOT EXISTS `notiflow_t_a-1`"));
        assert!(ddl.contains("FROM `notiflow`.notify_events WHERE tenant = 'a-1'"));
        assert!(!ddl.contains('{'), "every placeholder filled: {ddl}");
        let xml = users_xml("notiflow", &[("acme".into(), "correct horse battery".into())], "::/0");
        assert!(xml.contains("<analyst_acme>") && xml.contains("<database>notiflow_t_acme</database>"));
        assert!(xml.contains(&crate::tenants::key_hash("correct horse battery")) && !xml.contains("correct horse"));
        assert!(!xml.contains('{'), "{xml}");
    }
}
