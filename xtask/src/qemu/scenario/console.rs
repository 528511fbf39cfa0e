//! What /init's `MOLT-...` marker lines on the guest's console say (qemu/init prints them): snapshots with a digest per file, e2fsck results, values such as the agent's exit code and peak RSS.

use anyhow::{bail, ensure, Context, Result};

use crate::qemu::disk::Tree;

/// The guest's console lines and what /init's markers say in them.
pub(super) struct Console(pub(super) Vec<String>);

/// A `MOLT-SNAP` block.
pub(super) struct Snapshot {
    pub(super) current: String,
    pub(super) tree: Tree,
}

impl Console {
    pub(super) fn has(&self, needle: &str) -> bool {
        self.0.iter().any(|l| l.contains(needle))
    }

    /// The word after the last `prefix`.
    pub(super) fn value(&self, prefix: &str) -> Option<String> {
        self.0.iter().rev().find_map(|l| {
            let rest = l.split(prefix).nth(1)?;
            Some(rest.split_whitespace().next().unwrap_or("").to_string())
        })
    }

    /// Fails with `failed` unless the last `marker` (such as `MOLT-AGENT-EXIT rc=`) says 0.
    pub(super) fn expect_ok(&self, marker: &str, failed: &str) -> Result<()> {
        ensure!(self.value(marker).as_deref() == Some("0"), "{failed}");
        Ok(())
    }

    pub(super) fn expect_clean(&self, tag: &str) -> Result<()> {
        match self.value(&format!("MOLT-FSCK {tag} rc=")) {
            Some(rc) if rc == "0" => Ok(()),
            Some(rc) => bail!("e2fsck -fn ({tag}) in the guest exited {rc}"),
            None => bail!("the guest printed no e2fsck result ({tag})"),
        }
    }

    pub(super) fn rss_kib(&self) -> Option<u64> {
        self.value("vmhwm_kb=")?.parse().ok().filter(|k| *k > 0)
    }

    /// The snapshot printed under `tag` (`raw`, `settled`, `final`).
    pub(super) fn snapshot(&self, tag: &str) -> Result<Snapshot> {
        let head = format!("MOLT-SNAP {tag} current=");
        let start = self
            .0
            .iter()
            .position(|l| l.contains(&head))
            .with_context(|| format!("the guest printed no `{tag}` snapshot"))?;
        let current = self.0[start]
            .split(&head)
            .nth(1)
            .unwrap_or("")
            .trim()
            .to_string();
        let file = format!("MOLT-FILE {tag} ");
        let end = format!("MOLT-SNAP-END {tag}");
        let mut tree = Tree::new();
        for line in &self.0[start + 1..] {
            if line.contains(&end) {
                return Ok(Snapshot { current, tree });
            }
            if let Some(rest) = line.split(&file).nth(1) {
                let (sum, path) = rest
                    .split_once(' ')
                    .with_context(|| format!("bad snapshot line `{line}`"))?;
                tree.insert(path.to_string(), sum.to_string());
            }
        }
        bail!("the `{tag}` snapshot listing is cut short")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn console(lines: &[&str]) -> Console {
        Console(lines.iter().map(|l| l.to_string()).collect())
    }

    #[test]
    fn a_snapshot_block_is_read_with_its_digests() {
        let c = console(&[
            "MOLT-SNAP raw current=slots/a",
            "MOLT-FILE raw 00ff opt/app/version.txt",
            " INFO something the agent printed in between",
            "MOLT-FILE raw 11aa opt/app/a file with spaces",
            "MOLT-SNAP-END raw",
            "MOLT-SNAP final current=slots/b",
            "MOLT-SNAP-END final",
        ]);
        let s = c.snapshot("raw").unwrap();
        assert_eq!(s.current, "slots/a");
        assert_eq!(s.tree.len(), 2);
        assert_eq!(s.tree["opt/app/a file with spaces"], "11aa");
        let f = c.snapshot("final").unwrap();
        assert_eq!((f.current.as_str(), f.tree.len()), ("slots/b", 0));
        let err = c.snapshot("settled").err().unwrap();
        assert!(err.to_string().contains("no `settled` snapshot"), "{err}");
    }

    #[test]
    fn a_listing_cut_short_is_an_error() {
        let c = console(&["MOLT-SNAP raw current=slots/a", "MOLT-FILE raw 00 x"]);
        let err = c.snapshot("raw").err().unwrap();
        assert!(err.to_string().contains("cut short"), "{err}");
    }

    #[test]
    fn fsck_results_and_values_are_read() {
        let c = console(&[
            "MOLT-FSCK boot rc=0",
            "MOLT-FSCK final rc=4",
            "MOLT-RSS pid=9 vmhwm_kb=5384",
        ]);
        assert!(c.expect_clean("boot").is_ok());
        let err = c.expect_clean("final").err().unwrap();
        assert!(err.to_string().contains("exited 4"), "{err}");
        assert!(c.expect_clean("other").is_err());
        assert_eq!(c.rss_kib(), Some(5384));
    }
}
