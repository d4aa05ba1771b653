//! What a person types for a run or a DAG on the command line, turned into
//! the id the API takes: a run id in full, a unique prefix of one (`01a25…`,
//! as with git commits), or `latest` (optionally of one `--dag`); a DAG id
//! checked against the server's DAGs, with "did you mean" for a near miss.
//!
//! Run ids are UUIDv7, and the API lists runs newest first by id with an
//! exclusive `before` cursor, so a prefix is one list call: the runs just
//! below the prefix padded with `f` are the highest ids that can start with
//! it. No endpoint of its own is needed.

use std::str::FromStr;

use anyhow::{anyhow, bail};
use serde_json::Value;
use trainyard_core::ids::RunId;

use super::client::Client;

/// How many matches an ambiguous prefix lists.
const SHOWN_MATCHES: usize = 10;

/// The run id `raw` names: a full id as given, `latest` (newest run, of
/// `dag` when given) or the one run whose id starts with `raw` (of `dag`
/// when given). An unknown or ambiguous prefix is an error listing what
/// matched.
pub async fn run_id(client: &Client, raw: &str, dag: Option<&str>) -> anyhow::Result<String> {
    let raw = raw.trim();
    if let Some(dag) = dag {
        dag_id(client, dag).await?;
    }
    if raw == "latest" {
        let page = client.get_json(&runs_path(dag, 1, None)).await?;
        return match first_ids(&page).into_iter().next() {
            Some(id) => Ok(id),
            None => Err(match dag {
                Some(dag) => {
                    anyhow!("DAG {dag} has no runs yet (trigger one: `trainyard trigger {dag}`)")
                }
                None => anyhow!("there are no runs yet (trigger one: `trainyard trigger DAG`)"),
            }),
        };
    }
    if RunId::from_str(raw).is_ok() {
        return Ok(raw.to_ascii_lowercase());
    }
    let hex: String = raw
        .chars()
        .filter(|c| *c != '-')
        .map(|c| c.to_ascii_lowercase())
        .collect();
    if hex.is_empty() || hex.len() > 32 || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
        bail!(
            "{raw:?} is not a run id: give a run id, the start of one (hex digits, as \
             `trainyard runs list` shows them) or `latest`"
        );
    }
    let upper = format!("{hex:f<32}");
    let upper = format!(
        "{}-{}-{}-{}-{}",
        &upper[0..8],
        &upper[8..12],
        &upper[12..16],
        &upper[16..20],
        &upper[20..32]
    );
    // One more than shown, to say "and more".
    let limit = SHOWN_MATCHES as u32 + 1;
    let page = client
        .get_json(&runs_path(dag, limit, Some(&upper)))
        .await?;
    let matches: Vec<String> = first_ids(&page)
        .into_iter()
        .filter(|id| id.replace('-', "").starts_with(&hex))
        .collect();
    // `before` is exclusive: the padded id itself can only be a full id,
    // which was handled above.
    let of_dag = dag.map(|d| format!(" of DAG {d}")).unwrap_or_default();
    match matches.as_slice() {
        [] => bail!("no run{of_dag} has an id starting with {raw:?} (see `trainyard runs list`)"),
        [one] => Ok(one.clone()),
        many => {
            let shown = many
                .iter()
                .take(SHOWN_MATCHES)
                .map(|id| format!("  {id}"))
                .collect::<Vec<_>>()
                .join("\n");
            let more = if many.len() > SHOWN_MATCHES {
                "\n  … and more"
            } else {
                ""
            };
            bail!(
                "run id prefix {raw:?} is ambiguous: it starts {} runs{of_dag}; type more of \
                 the id:\n{shown}{more}",
                if many.len() > SHOWN_MATCHES {
                    format!("more than {SHOWN_MATCHES}")
                } else {
                    many.len().to_string()
                }
            )
        }
    }
}

fn runs_path(dag: Option<&str>, limit: u32, before: Option<&str>) -> String {
    let mut path = format!("/api/v1/runs?limit={limit}");
    if let Some(dag) = dag {
        path.push_str(&format!("&dag_id={dag}"));
    }
    if let Some(before) = before {
        path.push_str(&format!("&before={before}"));
    }
    path
}

fn first_ids(page: &Value) -> Vec<String> {
    page["runs"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| r["id"].as_str().map(str::to_owned))
        .collect()
}

/// Checks that the server knows DAG `raw` and returns its detail
/// (`GET /api/v1/dags/{id}`); an unknown DAG is an error naming the closest
/// known id.
pub async fn dag_id(client: &Client, raw: &str) -> anyhow::Result<Value> {
    let list = client.get_json("/api/v1/dags").await?;
    let known: Vec<&str> = list["dags"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|d| d["id"].as_str())
        .collect();
    if !known.contains(&raw) {
        let hint = trainyard_core::suggest::did_you_mean(raw, known.iter().copied());
        let all = if known.is_empty() {
            "none is loaded; check the scheduler's --dags folder".to_owned()
        } else if hint.is_empty() {
            format!("known DAGs: {}", known.join(", "))
        } else {
            "see `trainyard dags list`".to_owned()
        };
        bail!("no DAG {raw:?} on the server{hint} ({all})");
    }
    client.get_json(&format!("/api/v1/dags/{raw}")).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_read_from_a_runs_page() {
        let page = serde_json::json!({"runs": [{"id": "a"}, {"id": "b"}, {"x": 1}]});
        assert_eq!(first_ids(&page), vec!["a", "b"]);
        assert_eq!(
            runs_path(Some("d"), 3, Some("u")),
            "/api/v1/runs?limit=3&dag_id=d&before=u"
        );
    }
}
