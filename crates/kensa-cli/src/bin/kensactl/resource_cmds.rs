//! The per-resource commands: `list`, `info` and `delete` for every kind (one implementation,
//! parameterized by [`Kind`]), and the extras of checks, events, namespaces, users and API
//! keys. Output goes through `kensa_cli::output`, so the columns of a kind are defined there.

use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context as _, Result};
use kensa_cli::{output, ListOptions, ResourceRef, Scope};
use kensa_types::Kind;
use serde_json::{json, Value};

use crate::args::{
    ApiKeyCmd, CheckCmd, DeleteArgs, EventCmd, GenericCmd, ListArgs, NamespaceCmd, UserCmd,
};
use crate::context::{confirm_delete, prompt_secret, Context};

/// Sensu requires passwords of at least this many characters; checking it here gives a clear
/// message before a hash is computed and sent.
const MIN_PASSWORD_LEN: usize = 8;

pub fn generic(ctx: &mut Context, kind: Kind, action: GenericCmd) -> Result<()> {
    match action {
        GenericCmd::List(args) => list(ctx, kind, &args),
        GenericCmd::Info { name } => info(ctx, ResourceRef::new(kind, ctx.namespace(), name)),
        GenericCmd::Delete(DeleteArgs { name, skip_confirm }) => delete(
            ctx,
            ResourceRef::new(kind, ctx.namespace(), name),
            skip_confirm,
            "Deleted",
        ),
    }
}

fn list(ctx: &mut Context, kind: Kind, args: &ListArgs) -> Result<()> {
    let scope = if args.all_namespaces {
        Scope::AllNamespaces
    } else {
        Scope::Namespace(ctx.namespace())
    };
    let options = ListOptions {
        chunk_size: args.chunk_size,
        label_selector: args.label_selector.clone(),
        field_selector: args.field_selector.clone(),
    };
    let format = ctx.format();
    let items = ctx.client()?.list(kind, &scope, &options)?;
    print!(
        "{}",
        output::list(kind, &items, format, args.all_namespaces)
    );
    Ok(())
}

fn info(ctx: &mut Context, reference: ResourceRef) -> Result<()> {
    let format = ctx.format();
    let item = ctx
        .client()?
        .get(&reference)
        .with_context(|| reference.to_string())?;
    print!("{}", output::one(reference.kind, &item, format));
    Ok(())
}

fn delete(ctx: &mut Context, reference: ResourceRef, skip_confirm: bool, done: &str) -> Result<()> {
    if !confirm_delete(skip_confirm, &reference.to_string())? {
        println!("Canceled");
        return Ok(());
    }
    ctx.client()?
        .delete(&reference)
        .with_context(|| reference.to_string())?;
    println!("{done}");
    Ok(())
}

pub fn check(ctx: &mut Context, action: CheckCmd) -> Result<()> {
    match action {
        CheckCmd::Generic(action) => generic(ctx, Kind::CheckConfig, action),
        CheckCmd::Execute {
            name,
            subscriptions,
            reason,
        } => {
            let namespace = ctx.namespace();
            ctx.client()?
                .execute_check(&namespace, &name, &subscriptions, &reason)?;
            println!("Issued");
            Ok(())
        }
    }
}

fn event_ref(ctx: &Context, entity: &str, check: &str) -> ResourceRef {
    ResourceRef::new(Kind::Event, ctx.namespace(), format!("{entity}/{check}"))
}

pub fn event(ctx: &mut Context, action: EventCmd) -> Result<()> {
    match action {
        EventCmd::List(args) => list(ctx, Kind::Event, &args),
        EventCmd::Info { entity, check } => info(ctx, event_ref(ctx, &entity, &check)),
        EventCmd::Delete {
            entity,
            check,
            skip_confirm,
        } => delete(
            ctx,
            event_ref(ctx, &entity, &check),
            skip_confirm,
            "Deleted",
        ),
        EventCmd::Resolve { entity, check } => {
            // As sensuctl: the stored event, with a passing result recorded now.
            let reference = event_ref(ctx, &entity, &check);
            let client = ctx.client()?;
            let mut event = client
                .get(&reference)
                .with_context(|| reference.to_string())?;
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            let Some(check) = event.get_mut("check").and_then(Value::as_object_mut) else {
                bail!("{reference} has no check to resolve");
            };
            check.insert("status".into(), json!(0));
            check.insert("output".into(), json!("Resolved manually by kensactl"));
            check.insert("executed".into(), json!(now));
            event["timestamp"] = json!(now);
            client.put(&reference, &event)?;
            println!("Resolved");
            Ok(())
        }
    }
}

pub fn namespace(ctx: &mut Context, action: NamespaceCmd) -> Result<()> {
    match action {
        NamespaceCmd::Generic(action) => generic(ctx, Kind::Namespace, action),
        NamespaceCmd::Create { name } => {
            ctx.client()?
                .create(Kind::Namespace, "", &json!({"name": name}))?;
            println!("Created");
            Ok(())
        }
    }
}

/// A password from the flag, or from a no-echo prompt on a terminal.
fn password(given: Option<String>, question: &str, flag: &str) -> Result<String> {
    let password = match given {
        Some(password) => password,
        None if std::io::IsTerminal::is_terminal(&std::io::stdin()) => prompt_secret(question)?,
        None => bail!("{flag} is required when stdin is not a terminal"),
    };
    Ok(password)
}

fn check_password_length(password: &str) -> Result<()> {
    if password.chars().count() < MIN_PASSWORD_LEN {
        bail!("password must be at least {MIN_PASSWORD_LEN} characters");
    }
    Ok(())
}

pub fn user(ctx: &mut Context, action: UserCmd) -> Result<()> {
    let user_ref = |name: &str| ResourceRef::new(Kind::User, "", name);
    match action {
        UserCmd::Generic(action) => generic(ctx, Kind::User, action),
        UserCmd::Create {
            name,
            password: given,
            groups,
        } => {
            let password = password(given, "Password:", "--password")?;
            check_password_length(&password)?;
            let body = json!({"username": name, "password": password, "groups": groups, "disabled": false});
            ctx.client()?.create(Kind::User, "", &body)?;
            println!("Created");
            Ok(())
        }
        UserCmd::ChangePassword {
            name,
            current_password,
            new_password,
        } => {
            let name = match name {
                Some(name) => name,
                None if !ctx.config.profile.username.is_empty() => {
                    ctx.config.profile.username.clone()
                }
                None => bail!("no user given and none configured"),
            };
            let current = password(current_password, "Current password:", "--current-password")?;
            let new = password(new_password, "New password:", "--new-password")?;
            check_password_length(&new)?;
            ctx.client()?.change_password(&name, &current, &new)?;
            println!("Password updated");
            Ok(())
        }
        UserCmd::Disable(DeleteArgs { name, skip_confirm }) => {
            // DELETE /users/{u} disables rather than removes.
            if !confirm_delete(skip_confirm, &format!("(disable) user {name:?}"))? {
                println!("Canceled");
                return Ok(());
            }
            ctx.client()?.delete(&user_ref(&name))?;
            println!("Disabled");
            Ok(())
        }
        UserCmd::Reinstate { name } => {
            ctx.client()?.reinstate_user(&name)?;
            println!("Reinstated");
            Ok(())
        }
        UserCmd::AddGroup { name, group } => {
            ctx.client()?.set_group_membership(&name, &group, true)?;
            println!("Added {name:?} to group {group:?}");
            Ok(())
        }
        UserCmd::RemoveGroup { name, group } => {
            ctx.client()?.set_group_membership(&name, &group, false)?;
            println!("Removed {name:?} from group {group:?}");
            Ok(())
        }
    }
}

pub fn api_key(ctx: &mut Context, action: ApiKeyCmd) -> Result<()> {
    match action {
        ApiKeyCmd::Generic(action) => generic(ctx, Kind::ApiKey, action),
        ApiKeyCmd::Grant { username } => {
            let location = ctx
                .client()?
                .create_api_key(&username)
                .context("granting an API key")?;
            println!("Created: {location}");
            Ok(())
        }
        ApiKeyCmd::Revoke(DeleteArgs { name, skip_confirm }) => delete(
            ctx,
            ResourceRef::new(Kind::ApiKey, "", name),
            skip_confirm,
            "Revoked",
        ),
    }
}
