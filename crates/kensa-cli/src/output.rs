//! The output formats of `list`, `info` and `dump` (reference §4.2): `tabular` (human
//! columns), `json` (the unwrapped API shape), `yaml` and `wrapped-json` (the envelope that
//! `create` reads back; YAML documents are separated by `---`).
//!
//! The columns of each kind are data, not code: [`columns`] maps a kind to a list of
//! [`Column`]s, each a header and a [`Cell`] rule reading the unwrapped JSON by pointer. `info`
//! renders the same columns vertically, so a kind's table is written once.

use std::fmt;
use std::str::FromStr;

use comfy_table::{ContentArrangement, Table};
use kensa_types::{Kind, Wrapped};
use serde_json::Value;

/// How results are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Format {
    #[default]
    Tabular,
    Json,
    Yaml,
    #[value(name = "wrapped-json")]
    WrappedJson,
}

impl Format {
    pub fn as_str(self) -> &'static str {
        match self {
            Format::Tabular => "tabular",
            Format::Json => "json",
            Format::Yaml => "yaml",
            Format::WrappedJson => "wrapped-json",
        }
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Format {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        [
            Format::Tabular,
            Format::Json,
            Format::Yaml,
            Format::WrappedJson,
        ]
        .into_iter()
        .find(|f| f.as_str() == s)
        .ok_or_else(|| format!("unknown format {s:?} (tabular, json, yaml, wrapped-json)"))
    }
}

/// How one cell is read from an unwrapped resource. Pointers are RFC 6901 (`/metadata/name`).
#[derive(Clone, Copy)]
pub enum Cell {
    /// A string (or any scalar) as is.
    Text(&'static str),
    /// A number, blank when zero or absent (an unset interval or TTL).
    Number(&'static str),
    /// A list of strings joined with `,`.
    List(&'static str),
    /// A boolean as `true`/`false`.
    Flag(&'static str),
    /// Unix seconds as a UTC date, `N/A` when zero.
    Time(&'static str),
    /// The length of a list.
    Count(&'static str),
    /// Anything that needs more than one field.
    Computed(fn(&Value) -> String),
}

/// One column of a kind's table.
#[derive(Clone, Copy)]
pub struct Column {
    pub header: &'static str,
    pub cell: Cell,
}

const fn col(header: &'static str, cell: Cell) -> Column {
    Column { header, cell }
}

const NAME: Column = col("Name", Cell::Text("/metadata/name"));

static NAMESPACE_COLUMNS: [Column; 1] = [col("Name", Cell::Text("/name"))];
static ROLE_COLUMNS: [Column; 2] = [NAME, col("Rules", Cell::Count("/rules"))];
static BINDING_COLUMNS: [Column; 4] = [
    NAME,
    col("Role Ref", Cell::Computed(role_ref)),
    col("Users", Cell::Computed(|v| subjects(v, "User"))),
    col("Groups", Cell::Computed(|v| subjects(v, "Group"))),
];
static USER_COLUMNS: [Column; 3] = [
    col("Username", Cell::Text("/username")),
    col("Groups", Cell::List("/groups")),
    col(
        "Enabled",
        Cell::Computed(|v| (!v["disabled"].as_bool().unwrap_or(false)).to_string()),
    ),
];
static API_KEY_COLUMNS: [Column; 3] = [
    NAME,
    col("Username", Cell::Text("/username")),
    col("Created At", Cell::Time("/created_at")),
];
static ASSET_COLUMNS: [Column; 3] = [
    NAME,
    col("URL", Cell::Computed(asset_urls)),
    col("Hash", Cell::Computed(asset_hashes)),
];
static HOOK_COLUMNS: [Column; 4] = [
    NAME,
    col("Command", Cell::Text("/command")),
    col("Timeout", Cell::Number("/timeout")),
    col("Stdin?", Cell::Flag("/stdin")),
];
static CHECK_COLUMNS: [Column; 14] = [
    NAME,
    col("Command", Cell::Text("/command")),
    col("Interval", Cell::Number("/interval")),
    col("Cron", Cell::Text("/cron")),
    col("Timeout", Cell::Number("/timeout")),
    col("TTL", Cell::Number("/ttl")),
    col("Subscriptions", Cell::List("/subscriptions")),
    col("Handlers", Cell::List("/handlers")),
    col("Assets", Cell::List("/runtime_assets")),
    col("Hooks", Cell::Computed(check_hooks)),
    col("Publish?", Cell::Flag("/publish")),
    col("Stdin?", Cell::Flag("/stdin")),
    col("Metric Format", Cell::Text("/output_metric_format")),
    col("Metric Handlers", Cell::List("/output_metric_handlers")),
];
static FILTER_COLUMNS: [Column; 3] = [
    NAME,
    col("Action", Cell::Text("/action")),
    col(
        "Expressions",
        Cell::Computed(|v| strings(&v["expressions"]).join(" && ")),
    ),
];
static MUTATOR_COLUMNS: [Column; 6] = [
    NAME,
    col("Type", Cell::Computed(|v| non_empty_or(&v["type"], "pipe"))),
    col(
        "Command",
        Cell::Computed(|v| non_empty_or(&v["command"], &one_line(&text(&v["eval"]), 60))),
    ),
    col("Timeout", Cell::Number("/timeout")),
    col("Environment Variables", Cell::List("/env_vars")),
    col("Assets", Cell::List("/runtime_assets")),
];
static HANDLER_COLUMNS: [Column; 8] = [
    NAME,
    col("Type", Cell::Text("/type")),
    col("Timeout", Cell::Number("/timeout")),
    col("Filters", Cell::List("/filters")),
    col("Mutator", Cell::Text("/mutator")),
    col("Execute", Cell::Computed(handler_target)),
    col("Environment Variables", Cell::List("/env_vars")),
    col("Assets", Cell::List("/runtime_assets")),
];
static PIPELINE_COLUMNS: [Column; 2] = [NAME, col("Workflows", Cell::Computed(pipeline_workflows))];
static ENTITY_COLUMNS: [Column; 5] = [
    col("ID", Cell::Text("/metadata/name")),
    col("Class", Cell::Text("/entity_class")),
    col("OS", Cell::Text("/system/os")),
    col("Subscriptions", Cell::List("/subscriptions")),
    col("Last Seen", Cell::Time("/last_seen")),
];
static SILENCED_COLUMNS: [Column; 8] = [
    NAME,
    col("Subscription", Cell::Text("/subscription")),
    col("Check", Cell::Text("/check")),
    col("Begin", Cell::Time("/begin")),
    col("Expire", Cell::Computed(silenced_expiry)),
    col("ExpireOnResolve", Cell::Flag("/expire_on_resolve")),
    col("Creator", Cell::Text("/creator")),
    col("Reason", Cell::Text("/reason")),
];
static EVENT_COLUMNS: [Column; 7] = [
    col("Entity", Cell::Text("/entity/metadata/name")),
    col("Check", Cell::Text("/check/metadata/name")),
    col(
        "Output",
        Cell::Computed(|v| one_line(&text(&v["check"]["output"]), 100)),
    ),
    col("Status", Cell::Text("/check/status")),
    col("Silenced", Cell::Flag("/check/is_silenced")),
    col("Timestamp", Cell::Time("/timestamp")),
    col("UUID", Cell::Text("/id")),
];

/// The table of a kind.
pub fn columns(kind: Kind) -> &'static [Column] {
    match kind {
        Kind::Namespace => &NAMESPACE_COLUMNS,
        Kind::ClusterRole | Kind::Role => &ROLE_COLUMNS,
        Kind::ClusterRoleBinding | Kind::RoleBinding => &BINDING_COLUMNS,
        Kind::User => &USER_COLUMNS,
        Kind::ApiKey => &API_KEY_COLUMNS,
        Kind::Asset => &ASSET_COLUMNS,
        Kind::HookConfig => &HOOK_COLUMNS,
        Kind::CheckConfig => &CHECK_COLUMNS,
        Kind::EventFilter => &FILTER_COLUMNS,
        Kind::Mutator => &MUTATOR_COLUMNS,
        Kind::Handler => &HANDLER_COLUMNS,
        Kind::Pipeline => &PIPELINE_COLUMNS,
        Kind::Entity => &ENTITY_COLUMNS,
        Kind::Silenced => &SILENCED_COLUMNS,
        Kind::Event => &EVENT_COLUMNS,
    }
}

impl Cell {
    pub fn render(&self, value: &Value) -> String {
        let at = |pointer: &str| value.pointer(pointer).unwrap_or(&Value::Null);
        match *self {
            Cell::Text(pointer) => text(at(pointer)),
            Cell::Number(pointer) => match at(pointer) {
                Value::Number(n) if n.as_f64() != Some(0.0) => n.to_string(),
                _ => String::new(),
            },
            Cell::List(pointer) => strings(at(pointer)).join(","),
            Cell::Flag(pointer) => at(pointer).as_bool().unwrap_or(false).to_string(),
            Cell::Time(pointer) => match at(pointer).as_i64() {
                Some(secs) if secs != 0 => format_unix(secs),
                _ => "N/A".to_owned(),
            },
            Cell::Count(pointer) => at(pointer).as_array().map_or(0, Vec::len).to_string(),
            Cell::Computed(f) => f(value),
        }
    }
}

/// A scalar as text; `null` is empty.
fn text(value: &Value) -> String {
    match value {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn strings(value: &Value) -> Vec<String> {
    value
        .as_array()
        .map(|items| items.iter().map(text).collect())
        .unwrap_or_default()
}

fn non_empty_or(value: &Value, default: &str) -> String {
    match text(value) {
        s if s.is_empty() => default.to_owned(),
        s => s,
    }
}

/// Collapses whitespace runs (including newlines) and cuts at `max` characters, so that a
/// multi-line check output keeps a table row on one line.
fn one_line(text: &str, max: usize) -> String {
    let collapsed = text.split_whitespace().collect::<Vec<_>>().join(" ");
    match collapsed.char_indices().nth(max) {
        Some((cut, _)) => format!("{}...", &collapsed[..cut]),
        None => collapsed,
    }
}

fn role_ref(value: &Value) -> String {
    let role = &value["role_ref"];
    format!("{}/{}", text(&role["type"]), text(&role["name"]))
}

fn subjects(value: &Value, subject_type: &str) -> String {
    value["subjects"]
        .as_array()
        .map(|subjects| {
            subjects
                .iter()
                .filter(|s| {
                    s["type"]
                        .as_str()
                        .is_some_and(|t| t.eq_ignore_ascii_case(subject_type))
                })
                .map(|s| text(&s["name"]))
                .collect::<Vec<_>>()
                .join(",")
        })
        .unwrap_or_default()
}

/// The asset's URL, or one per build.
fn asset_urls(value: &Value) -> String {
    match value["builds"].as_array() {
        Some(builds) if !builds.is_empty() => builds
            .iter()
            .map(|b| text(&b["url"]))
            .collect::<Vec<_>>()
            .join(","),
        _ => text(&value["url"]),
    }
}

/// Short SHA-512 prefixes, like git's short hashes.
fn asset_hashes(value: &Value) -> String {
    let short = |v: &Value| text(v).chars().take(7).collect::<String>();
    match value["builds"].as_array() {
        Some(builds) if !builds.is_empty() => builds
            .iter()
            .map(|b| short(&b["sha512"]))
            .collect::<Vec<_>>()
            .join(","),
        _ => short(&value["sha512"]),
    }
}

/// `check_hooks` is a list of single-key maps `{"critical": ["a", "b"]}`.
fn check_hooks(value: &Value) -> String {
    value["check_hooks"]
        .as_array()
        .map(|lists| {
            lists
                .iter()
                .filter_map(Value::as_object)
                .flat_map(|map| {
                    map.iter()
                        .map(|(status, hooks)| format!("{status}: {}", strings(hooks).join(",")))
                })
                .collect::<Vec<_>>()
                .join("; ")
        })
        .unwrap_or_default()
}

/// What a handler runs: its command, its socket, or its member handlers.
fn handler_target(value: &Value) -> String {
    match value["type"].as_str().unwrap_or_default() {
        "tcp" | "udp" => format!(
            "{}:{}",
            text(&value["socket"]["host"]),
            text(&value["socket"]["port"])
        ),
        "set" => strings(&value["handlers"]).join(","),
        _ => text(&value["command"]),
    }
}

fn pipeline_workflows(value: &Value) -> String {
    value["workflows"]
        .as_array()
        .map(|workflows| {
            workflows
                .iter()
                .map(|w| text(&w["name"]))
                .collect::<Vec<_>>()
                .join(",")
        })
        .unwrap_or_default()
}

fn silenced_expiry(value: &Value) -> String {
    match (value["expire_at"].as_i64(), value["expire"].as_i64()) {
        (Some(at), _) if at > 0 => format_unix(at),
        (_, Some(secs)) if secs > 0 => format!("{secs}s"),
        _ => "never".to_owned(),
    }
}

/// Unix seconds as `YYYY-MM-DD HH:MM:SS +0000 UTC` (days-from-civil in reverse; no time zone
/// database needed).
pub fn format_unix(secs: i64) -> String {
    let days = secs.div_euclid(86_400);
    let second_of_day = secs.rem_euclid(86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1_460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let mp = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} +0000 UTC",
        second_of_day / 3_600,
        second_of_day % 3_600 / 60,
        second_of_day % 60
    )
}

/// Header row underlined, no other lines, as sensuctl prints.
const TABLE_STYLE: &str = "     ─             ";

fn new_table() -> Table {
    let mut table = Table::new();
    table
        .load_preset(TABLE_STYLE)
        .set_content_arrangement(ContentArrangement::Dynamic);
    table
}

/// A list as a table. With `all_namespaces`, namespaced kinds get a Namespace column after the
/// name, since the same name may then appear twice.
pub fn table(kind: Kind, items: &[Value], all_namespaces: bool) -> String {
    let columns = columns(kind);
    let with_namespace = all_namespaces && kind.is_namespaced();
    let mut table = new_table();
    let mut header: Vec<&str> = columns.iter().map(|c| c.header).collect();
    if with_namespace {
        header.insert(1, "Namespace");
    }
    table.set_header(header);
    for item in items {
        let mut row: Vec<String> = columns.iter().map(|c| c.cell.render(item)).collect();
        if with_namespace {
            row.insert(1, kind.namespace_of(item));
        }
        table.add_row(row);
    }
    format!("{table}\n")
}

/// One resource as a two-column field/value table, with its namespace and metadata maps.
pub fn info_table(kind: Kind, item: &Value) -> String {
    let mut table = new_table();
    for column in columns(kind) {
        table.add_row(vec![column.header.to_owned(), column.cell.render(item)]);
    }
    if kind.is_namespaced() {
        table.add_row(vec!["Namespace".to_owned(), kind.namespace_of(item)]);
    }
    for (header, key) in [("Labels", "labels"), ("Annotations", "annotations")] {
        if let Some(map) = item["metadata"][key].as_object().filter(|m| !m.is_empty()) {
            let pairs: Vec<String> = map
                .iter()
                .map(|(k, v)| format!("{k}={}", text(v)))
                .collect();
            table.add_row(vec![header.to_owned(), pairs.join(", ")]);
        }
    }
    format!("{table}\n")
}

/// Several resources, possibly of different kinds, in one of the wrapped formats: YAML
/// documents separated by `---`, or JSON objects one after another (a stream `create` reads).
/// `Format::Json` prints the unwrapped values as one JSON array.
pub fn wrapped(items: &[(Kind, Value)], format: Format) -> String {
    match format {
        Format::Json => {
            let values: Vec<&Value> = items.iter().map(|(_, v)| v).collect();
            pretty_json(&values)
        }
        Format::WrappedJson => items
            .iter()
            .map(|(kind, v)| pretty_json(&Wrapped::wrap(*kind, v)))
            .collect(),
        Format::Yaml | Format::Tabular => items
            .iter()
            .map(|(kind, v)| {
                yaml_serde::to_string(&Wrapped::wrap(*kind, v))
                    .expect("JSON values always serialize as YAML")
            })
            .collect::<Vec<_>>()
            .join("---\n"),
    }
}

fn pretty_json<T: serde::Serialize + ?Sized>(value: &T) -> String {
    let mut out = serde_json::to_string_pretty(value).expect("JSON values always serialize");
    out.push('\n');
    out
}

/// A list of one kind in `format`.
pub fn list(kind: Kind, items: &[Value], format: Format, all_namespaces: bool) -> String {
    match format {
        Format::Tabular => table(kind, items, all_namespaces),
        Format::Json => pretty_json(items),
        _ => wrapped(
            &items.iter().map(|v| (kind, v.clone())).collect::<Vec<_>>(),
            format,
        ),
    }
}

/// One resource in `format`.
pub fn one(kind: Kind, item: &Value, format: Format) -> String {
    match format {
        Format::Tabular => info_table(kind, item),
        Format::Json => pretty_json(item),
        _ => wrapped(&[(kind, item.clone())], format),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn dates_render_in_utc() {
        let cases = [
            (0, "1970-01-01 00:00:00 +0000 UTC"),
            (951_782_400, "2000-02-29 00:00:00 +0000 UTC"),
            (1_700_000_000, "2023-11-14 22:13:20 +0000 UTC"),
            (-1, "1969-12-31 23:59:59 +0000 UTC"),
        ];
        for (secs, want) in cases {
            assert_eq!(format_unix(secs), want);
        }
    }

    #[test]
    fn cells_read_the_table_rules() {
        let check = json!({
            "metadata": {"name": "web", "namespace": "default"},
            "command": "check-http", "interval": 0, "cron": "@hourly", "ttl": 120,
            "subscriptions": ["linux", "web"], "handlers": null, "publish": true,
            "check_hooks": [{"critical": ["ps", "df"]}, {"1": ["top"]}],
        });
        let rendered: Vec<String> = columns(Kind::CheckConfig)
            .iter()
            .map(|c| c.cell.render(&check))
            .collect();
        assert_eq!(
            rendered,
            [
                "web",
                "check-http",
                "",
                "@hourly",
                "",
                "120",
                "linux,web",
                "",
                "",
                "critical: ps,df; 1: top",
                "true",
                "false",
                "",
                ""
            ]
        );
        let event = json!({"entity": {"metadata": {"name": "web1"}}, "check": {"metadata": {"name": "ping"}, "status": 2, "output": "CRITICAL\n  down\n"}, "timestamp": 0, "id": "u"});
        let rendered: Vec<String> = columns(Kind::Event)
            .iter()
            .map(|c| c.cell.render(&event))
            .collect();
        assert_eq!(
            rendered,
            ["web1", "ping", "CRITICAL down", "2", "false", "N/A", "u"]
        );
    }

    #[test]
    fn tables_have_headers_and_namespace_column_when_asked() {
        let items = vec![
            json!({"metadata": {"name": "h1", "namespace": "dev"}, "type": "tcp", "socket": {"host": "10.0.0.1", "port": 514}}),
        ];
        let out = table(Kind::Handler, &items, true);
        let lines: Vec<&str> = out.lines().collect();
        assert!(
            lines[0].contains("Name")
                && lines[0].contains("Namespace")
                && lines[0].contains("Execute"),
            "{out}"
        );
        assert!(lines[1].contains('─'), "{out}");
        assert!(
            lines[2].contains("dev") && lines[2].contains("10.0.0.1:514"),
            "{out}"
        );
    }

    #[test]
    fn wrapped_yaml_is_a_document_stream_in_envelope_order() {
        let items = vec![
            (Kind::Namespace, json!({"name": "prod"})),
            (
                Kind::HookConfig,
                json!({"metadata": {"name": "ps", "namespace": "prod"}, "command": "ps"}),
            ),
        ];
        let out = wrapped(&items, Format::Yaml);
        let keys: Vec<&str> = out.lines().filter(|l| !l.starts_with(' ')).collect();
        assert_eq!(
            keys,
            [
                "type: Namespace",
                "api_version: core/v2",
                "metadata: {}",
                "spec:",
                "---",
                "type: HookConfig",
                "api_version: core/v2",
                "metadata:",
                "spec:"
            ]
        );
        let json_stream = wrapped(&items, Format::WrappedJson);
        let parsed: Vec<Value> = serde_json::Deserializer::from_str(&json_stream)
            .into_iter()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(parsed[1]["spec"], json!({"command": "ps"}));
    }
}
