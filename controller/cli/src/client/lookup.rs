//! An update or device the operator named (by id, version or name) found in the controller's list, or a message saying why not.

use anyhow::{anyhow, bail, Result};

use molt_api::Update;

/// Resolves `molt deploy`'s UPDATE argument against the list: a number is an id first, then
/// a version; anything else a version.
pub fn find_update<'u>(updates: &'u [Update], arg: &str) -> Result<&'u Update> {
    let by_id = arg
        .parse::<u64>()
        .ok()
        .and_then(|n| updates.iter().find(|u| u.id == n));
    if let Some(u) = by_id {
        return Ok(u);
    }
    updates
        .iter()
        .find(|u| u.version == arg)
        .ok_or_else(|| anyhow!("no update with id or version `{arg}` (molt updates lists them)"))
}

/// Resolves a device given by id or name among `devices` (`(id, name)` pairs).
pub fn find_device(devices: &[(String, String)], arg: &str) -> Result<String> {
    if let Some((id, _)) = devices.iter().find(|(id, _)| id == arg) {
        return Ok(id.clone());
    }
    let named: Vec<&String> = devices
        .iter()
        .filter(|(_, name)| name == arg)
        .map(|(id, _)| id)
        .collect();
    match named.as_slice() {
        [one] => Ok((*one).clone()),
        [] => bail!("no device `{arg}` here (give its id or name)"),
        many => bail!(
            "{} devices are named `{arg}`: {}; give the id",
            many.len(),
            many.iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn updates_and_devices_resolve_by_id_or_name() {
        let u = |id, v: &str| Update {
            id,
            version: v.into(),
            compatible: "c".into(),
            kind: "patch".into(),
            size: 1,
            blake3: String::new(),
            comment: String::new(),
            created: String::new(),
            recipe: Default::default(),
            signer: String::new(),
            deployments: Vec::new(),
        };
        let list = [u(1, "2"), u(2, "1.0.0")];
        assert_eq!(
            find_update(&list, "2").unwrap().id,
            2,
            "a number is an id first"
        );
        assert_eq!(find_update(&list, "1.0.0").unwrap().id, 2);
        assert!(find_update(&list, "9.9").is_err());
        let devs = [
            ("dev_a".to_owned(), "gw".to_owned()),
            ("dev_b".to_owned(), "gw".to_owned()),
            ("dev_c".to_owned(), "solo".to_owned()),
        ];
        assert_eq!(find_device(&devs, "solo").unwrap(), "dev_c");
        assert_eq!(find_device(&devs, "dev_b").unwrap(), "dev_b");
        let e = find_device(&devs, "gw").unwrap_err().to_string();
        assert!(e.contains("2 devices are named `gw`: dev_a, dev_b"), "{e}");
    }
}
