//! The bulk commands: `create -f`, `delete -f`, `dump` and `edit`.
//!
//! `create` and `delete` are all-or-nothing up to the first write: every document of every
//! source is parsed and checked before the first request, and all problems are reported
//! together. Writes then happen one by one (the API has no transactions); if one fails, the
//! report says exactly which resources were applied and which were not.
//!
//! What `dump all` leaves out, and why (ask for a type by name to get it anyway):
//! - events: state produced by checks, not configuration; replaying them would run handlers
//!   and the server rewrites their history anyway;
//! - API keys: only the server mints them (`POST /apikeys`), a PUT cannot recreate one;
//! - users: the API never returns passwords or hashes, so a dumped user cannot be recreated.

use std::fmt::Write as _;
use std::io::Write as _;
use std::process::Command;

use anyhow::{bail, Context as _, Result};
use kensa_cli::documents::{parse_source, read_sources, Source};
use kensa_cli::resources::{parse_kind, prepare, Purpose, MANAGED_BY_AGENT, MANAGED_BY_LABEL};
use kensa_cli::{output, DocumentError, Format, ListOptions, PlannedResource, ResourceRef, Scope};
use kensa_types::Kind;

use crate::args::{DumpArgs, EditArgs, FileArgs};
use crate::context::Context;

/// Kinds `dump all` skips (see the module comment).
pub const DUMP_ALL_EXCLUDED: [Kind; 3] = [Kind::Event, Kind::ApiKey, Kind::User];

/// Reads, parses and prepares every document; any error stops the command before a write.
fn plan(ctx: &mut Context, args: &FileArgs, purpose: Purpose) -> Result<Vec<PlannedResource>> {
    let namespace = ctx.namespace();
    let client = ctx.client()?;
    let sources = read_sources(&args.files, args.recursive, &mut |url| {
        client.fetch_text(url).map_err(|e| e.to_string())
    })?;
    let mut planned = Vec::new();
    let mut errors: Vec<DocumentError> = Vec::new();
    let mut total = 0;
    for source in &sources {
        let (documents, mut source_errors) = parse_source(source);
        total += documents.len() + source_errors.len();
        for document in &documents {
            match prepare(document, &namespace, purpose) {
                Ok(resource) => planned.push(resource),
                Err(err) => source_errors.push(err),
            }
        }
        // Reported in file order, sources in the order given.
        source_errors.sort_by_key(|err| err.index);
        errors.extend(source_errors);
    }
    if !errors.is_empty() {
        let mut message = format!(
            "{} of {total} documents are invalid; nothing was written",
            errors.len()
        );
        for err in &errors {
            write!(message, "\n  {err}")?;
        }
        bail!(message);
    }
    if planned.is_empty() {
        bail!("no resources found in the input");
    }
    Ok(planned)
}

fn location(resource: &PlannedResource) -> String {
    format!(
        "{}: document {}, line {}",
        resource.origin, resource.index, resource.line
    )
}

/// Applies `write` to each resource in order; on the first failure, reports what was applied,
/// what failed and what was never attempted.
fn apply(
    resources: &[PlannedResource],
    verb: &str,
    mut write: impl FnMut(&PlannedResource) -> Result<(), kensa_cli::ClientError>,
) -> Result<()> {
    for (position, resource) in resources.iter().enumerate() {
        if let Err(err) = write(resource) {
            let mut message = format!(
                "{verb} {} ({}) failed: {err}",
                resource.reference,
                location(resource)
            );
            write!(message, "\napplied before the failure ({}):", position)?;
            for done in &resources[..position] {
                write!(message, "\n  {} ({})", done.reference, location(done))?;
            }
            if position == 0 {
                message.push_str("\n  (none)");
            }
            write!(message, "\nnot applied ({}):", resources.len() - position)?;
            write!(
                message,
                "\n  {} ({}) <- failed",
                resource.reference,
                location(resource)
            )?;
            for rest in &resources[position + 1..] {
                write!(
                    message,
                    "\n  {} ({}) <- not attempted",
                    rest.reference,
                    location(rest)
                )?;
            }
            bail!(message);
        }
    }
    Ok(())
}

pub fn create(ctx: &mut Context, args: FileArgs) -> Result<()> {
    let resources = plan(ctx, &args, Purpose::Create)?;
    let client = ctx.client()?;
    apply(&resources, "writing", |r| client.put(&r.reference, &r.body))?;
    println!(
        "Created {} resource{}",
        resources.len(),
        plural(resources.len())
    );
    Ok(())
}

/// Deletes dependents before what they depend on (reverse `Kind::ALL` order), so that the
/// output of `dump` can be fed straight back: namespaces last, once they are empty.
pub fn delete(ctx: &mut Context, args: FileArgs) -> Result<()> {
    let mut resources = plan(ctx, &args, Purpose::Delete)?;
    resources.sort_by_key(|r| std::cmp::Reverse(kind_rank(r.reference.kind)));
    let client = ctx.client()?;
    apply(&resources, "deleting", |r| client.delete(&r.reference))?;
    println!(
        "Deleted {} resource{}",
        resources.len(),
        plural(resources.len())
    );
    Ok(())
}

fn kind_rank(kind: Kind) -> usize {
    Kind::ALL
        .iter()
        .position(|k| *k == kind)
        .expect("every kind is in Kind::ALL")
}

fn plural(n: usize) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

/// The kinds named on the command line (`all` or a comma list), in dependency order.
fn dump_kinds(types: &str, omit: &[String]) -> Result<Vec<Kind>> {
    let parse = |name: &str| {
        parse_kind(name.trim()).with_context(|| format!("invalid resource type: {name:?}"))
    };
    let mut kinds: Vec<Kind> = if types == "all" {
        Kind::ALL
            .into_iter()
            .filter(|k| !DUMP_ALL_EXCLUDED.contains(k))
            .collect()
    } else {
        types
            .split(',')
            .filter(|t| !t.trim().is_empty())
            .map(parse)
            .collect::<Result<_>>()?
    };
    let omitted: Vec<Kind> = omit.iter().map(|o| parse(o)).collect::<Result<_>>()?;
    kinds.retain(|k| !omitted.contains(k));
    kinds.sort_by_key(|k| kind_rank(*k));
    kinds.dedup();
    Ok(kinds)
}

pub fn dump(ctx: &mut Context, args: DumpArgs) -> Result<()> {
    // Only the wrapped formats can be read back; a profile preferring tables still dumps YAML.
    let format = match ctx.global.format {
        Some(format @ (Format::Yaml | Format::WrappedJson)) => format,
        Some(other) => bail!("dump writes yaml or wrapped-json, not {other}"),
        None => match ctx.format() {
            Format::WrappedJson => Format::WrappedJson,
            _ => Format::Yaml,
        },
    };
    let kinds = dump_kinds(&args.types, &args.omit)?;
    let scope = if args.all_namespaces {
        Scope::AllNamespaces
    } else {
        Scope::Namespace(ctx.namespace())
    };
    let options = ListOptions {
        chunk_size: args.chunk_size,
        ..ListOptions::default()
    };
    let client = ctx.client()?;
    let mut items = Vec::new();
    for kind in kinds {
        let listed = client
            .list(kind, &scope, &options)
            .with_context(|| format!("listing {}", kind.resource()))?;
        items.extend(listed.into_iter().map(|value| (kind, value)));
    }
    let text = output::wrapped(&items, format);
    match &args.file {
        Some(path) => {
            std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?
        }
        None => std::io::stdout().write_all(text.as_bytes())?,
    }
    Ok(())
}

/// The editor command: `$VISUAL`, then `$EDITOR`, then `vi` — the fallback only on a
/// terminal, where a full-screen editor can work.
fn editor() -> Result<String> {
    let configured = ["VISUAL", "EDITOR"]
        .iter()
        .find_map(|name| std::env::var(name).ok().filter(|v| !v.trim().is_empty()));
    match configured {
        Some(editor) => Ok(editor),
        None if std::io::IsTerminal::is_terminal(&std::io::stdin()) => Ok("vi".to_owned()),
        None => {
            bail!("no editor: set VISUAL or EDITOR (stdin is not a terminal, so vi cannot be used)")
        }
    }
}

/// Runs the editor on `path` through the shell, so that `EDITOR="code --wait"` works.
fn run_editor(path: &std::path::Path) -> Result<()> {
    let editor = editor()?;
    let status = if cfg!(windows) {
        Command::new("cmd")
            .arg("/C")
            .arg(format!("{editor} \"{}\"", path.display()))
            .status()
    } else {
        Command::new("sh")
            .arg("-c")
            .arg(format!("{editor} \"$1\""))
            .arg("kensactl-editor")
            .arg(path)
            .status()
    }
    .with_context(|| format!("starting editor {editor:?}"))?;
    if !status.success() {
        bail!("editor {editor:?} exited with {status}; nothing was saved");
    }
    Ok(())
}

pub fn edit(ctx: &mut Context, args: EditArgs) -> Result<()> {
    let kind = parse_kind(&args.kind)
        .with_context(|| format!("invalid resource type: {:?}", args.kind))?;
    if kind == Kind::ApiKey {
        bail!("API keys cannot be edited: revoke the key and grant a new one");
    }
    let namespace = ctx.namespace();
    let format = if ctx
        .global
        .format
        .is_some_and(|f| matches!(f, Format::WrappedJson | Format::Json))
    {
        Format::WrappedJson
    } else {
        Format::Yaml
    };
    let reference = ResourceRef::new(kind, namespace.clone(), args.name);
    let client = ctx.client()?;
    let original = client
        .get(&reference)
        .with_context(|| reference.to_string())?;
    if kind == Kind::Entity && original["metadata"]["labels"][MANAGED_BY_LABEL] == MANAGED_BY_AGENT
    {
        bail!("{reference} is managed by its agent: change the agent's configuration instead");
    }
    let text = output::wrapped(&[(kind, original.clone())], format);
    let extension = if format == Format::Yaml {
        ".yaml"
    } else {
        ".json"
    };
    let mut file = tempfile::Builder::new()
        .prefix("kensactl-edit-")
        .suffix(extension)
        .tempfile()?;
    file.write_all(text.as_bytes())?;
    file.flush()?;
    let path = file.into_temp_path();

    run_editor(&path)?;
    let edited =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    if edited == text {
        println!("Edit cancelled, no changes made");
        return Ok(());
    }
    let result = parse_edit(&edited, &path.display().to_string(), &namespace, &reference).and_then(
        |planned| {
            if planned.body == original {
                return Ok(false);
            }
            client.put(&planned.reference, &planned.body)?;
            Ok(true)
        },
    );
    match result {
        Ok(false) => println!("Edit cancelled, no changes made"),
        Ok(true) => println!("Updated {reference}"),
        // Keep the file so that the user's edits are not lost.
        Err(err) => {
            return Err(match path.keep() {
                Ok(kept) => err.context(format!("your changes are saved in {}", kept.display())),
                Err(_) => err,
            })
        }
    }
    Ok(())
}

/// The edited file must still be exactly one valid resource, the same one.
fn parse_edit(
    text: &str,
    origin: &str,
    namespace: &str,
    reference: &ResourceRef,
) -> Result<PlannedResource> {
    let (documents, errors) = parse_source(&Source {
        origin: origin.to_owned(),
        text: text.to_owned(),
    });
    if let Some(err) = errors.into_iter().next() {
        bail!(err);
    }
    let [document] = documents.as_slice() else {
        bail!(
            "the edited file must hold exactly one resource, found {}",
            documents.len()
        );
    };
    let planned = prepare(document, namespace, Purpose::Update)?;
    if planned.reference != *reference {
        bail!(
            "edit cannot rename or move a resource ({} became {})",
            reference,
            planned.reference
        );
    }
    Ok(planned)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dump_all_is_ordered_and_skips_what_cannot_round_trip() {
        let kinds = dump_kinds("all", &[]).unwrap();
        assert_eq!(kinds.first(), Some(&Kind::Namespace));
        for excluded in DUMP_ALL_EXCLUDED {
            assert!(!kinds.contains(&excluded));
        }
        assert_eq!(
            dump_kinds("handlers,core/v2.Asset,check", &[]).unwrap(),
            [Kind::Asset, Kind::CheckConfig, Kind::Handler]
        );
        assert_eq!(
            dump_kinds("events", &[]).unwrap(),
            [Kind::Event],
            "explicitly named kinds are dumped"
        );
        assert!(!dump_kinds("all", &["checks".into()])
            .unwrap()
            .contains(&Kind::CheckConfig));
        assert!(dump_kinds("gizmos", &[]).is_err());
    }
}
