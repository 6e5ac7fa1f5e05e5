//! Turns source entries into an image tree: parents created on demand, later entries
//! replacing earlier ones at the same path, hard links resolved to one inode.

use super::source::{display, BuildError, EntryKind, SourceEntry};
use crate::rafs::image::*;
use std::collections::{BTreeMap, HashMap};

pub struct LayerTree {
    pub inodes: Vec<Inode>,
    /// Children of directories while the tree is built, by name.
    children: Vec<BTreeMap<Vec<u8>, InodeId>>,
    by_path: HashMap<Vec<u8>, InodeId>,
    /// Regular files whose data the chunker holds: inode -> chunk count.
    pub files: HashMap<InodeId, u32>,
}

impl LayerTree {
    pub fn new() -> Self {
        let root = dir_inode(0o755 | S_IFDIR);
        LayerTree {
            inodes: vec![root],
            children: vec![BTreeMap::new()],
            by_path: HashMap::from([(Vec::new(), ROOT)]),
            files: HashMap::new(),
        }
    }

    /// Adds an entry and returns its inode. A file's inode is new even when the path
    /// existed, so a replaced file never shares data with the old one.
    pub fn add(&mut self, e: SourceEntry) -> Result<InodeId, BuildError> {
        let bad = |detail: &str| BuildError::BadEntry {
            path: display(&e.path),
            detail: detail.into(),
        };
        if e.path.is_empty() {
            if e.kind != EntryKind::Dir {
                return Err(bad("the root must be a directory"));
            }
            let root = &mut self.inodes[ROOT];
            (
                root.mode,
                root.uid,
                root.gid,
                root.mtime,
                root.mtime_nsec,
                root.xattrs,
            ) = (e.mode, e.uid, e.gid, e.mtime, e.mtime_nsec, e.xattrs);
            return Ok(ROOT);
        }
        let (parent_path, name) = match e.path.iter().rposition(|&b| b == b'/') {
            Some(i) => (e.path[..i].to_vec(), e.path[i + 1..].to_vec()),
            None => (Vec::new(), e.path.clone()),
        };
        let parent = self.ensure_dir(&parent_path)?;
        if let EntryKind::HardLink(target) = &e.kind {
            let Some(&id) = self.by_path.get(target) else {
                return Err(BuildError::DanglingHardLink {
                    path: display(&e.path),
                    target: display(target),
                });
            };
            if self.inodes[id].is_dir() {
                return Err(bad("hard link to a directory"));
            }
            self.link(parent, name, e.path.clone(), id);
            return Ok(id);
        }
        // A directory entry over an existing directory only updates its attributes.
        if let (EntryKind::Dir, Some(&old)) = (&e.kind, self.by_path.get(&e.path)) {
            if self.inodes[old].is_dir() {
                let d = &mut self.inodes[old];
                (d.mode, d.uid, d.gid, d.mtime, d.mtime_nsec, d.xattrs) =
                    (e.mode, e.uid, e.gid, e.mtime, e.mtime_nsec, e.xattrs);
                return Ok(old);
            }
        }
        let kind = match &e.kind {
            EntryKind::Dir => InodeKind::Dir(Vec::new()),
            EntryKind::File { .. } => InodeKind::File(Vec::new()),
            EntryKind::Symlink(t) if t.is_empty() || t.len() > 4095 => {
                return Err(bad("symlink target empty or longer than 4095 bytes"))
            }
            EntryKind::Symlink(t) => InodeKind::Symlink(t.clone()),
            EntryKind::Special => InodeKind::Special,
            EntryKind::HardLink(_) => unreachable!("handled above"),
        };
        let size = match &e.kind {
            EntryKind::File { size } => *size,
            EntryKind::Symlink(t) => t.len() as u64,
            _ => 0,
        };
        let id = self.inodes.len();
        self.inodes.push(Inode {
            mode: e.mode,
            uid: e.uid,
            gid: e.gid,
            mtime: e.mtime,
            mtime_nsec: e.mtime_nsec,
            nlink: 1,
            size,
            rdev: e.rdev,
            xattrs: e.xattrs,
            kind,
        });
        self.children.push(BTreeMap::new());
        self.link(parent, name, e.path, id);
        Ok(id)
    }

    fn link(&mut self, parent: InodeId, name: Vec<u8>, path: Vec<u8>, id: InodeId) {
        if let Some(old) = self.children[parent].insert(name, id) {
            if old != id && self.inodes[old].is_dir() {
                self.forget_below(&path);
            }
        }
        self.by_path.insert(path, id);
    }

    /// Drops the path index of everything under a directory that was replaced.
    fn forget_below(&mut self, path: &[u8]) {
        let mut prefix = path.to_vec();
        prefix.push(b'/');
        self.by_path.retain(|p, _| !p.starts_with(&prefix));
    }

    fn ensure_dir(&mut self, path: &[u8]) -> Result<InodeId, BuildError> {
        if let Some(&id) = self.by_path.get(path) {
            if self.inodes[id].is_dir() {
                return Ok(id);
            }
            return Err(BuildError::BadEntry {
                path: display(path),
                detail: "used as a directory but is not one".into(),
            });
        }
        // Tars may omit parent directories: create them like tar does.
        let (parent_path, name) = match path.iter().rposition(|&b| b == b'/') {
            Some(i) => (path[..i].to_vec(), path[i + 1..].to_vec()),
            None => (Vec::new(), path.to_vec()),
        };
        let parent = self.ensure_dir(&parent_path)?;
        let id = self.inodes.len();
        self.inodes.push(dir_inode(0o755 | S_IFDIR));
        self.children.push(BTreeMap::new());
        self.link(parent, name, path.to_vec(), id);
        Ok(id)
    }

    /// Freezes the tree: sorted children, link counts; inodes no longer reachable (replaced
    /// by later entries) are left out.
    pub fn finish(self) -> (Vec<Inode>, HashMap<InodeId, InodeId>) {
        let LayerTree {
            mut inodes,
            children,
            ..
        } = self;
        for (id, kids) in children.into_iter().enumerate() {
            if let InodeKind::Dir(list) = &mut inodes[id].kind {
                *list = kids
                    .into_iter()
                    .map(|(name, inode)| DirEntry { name, inode })
                    .collect();
            }
        }
        compact(inodes)
    }
}

impl Default for LayerTree {
    fn default() -> Self {
        Self::new()
    }
}

fn dir_inode(mode: u32) -> Inode {
    Inode {
        mode,
        uid: 0,
        gid: 0,
        mtime: 0,
        mtime_nsec: 0,
        nlink: 2,
        size: 0,
        rdev: (0, 0),
        xattrs: Vec::new(),
        kind: InodeKind::Dir(Vec::new()),
    }
}

/// Keeps the inodes reachable from the root, renumbered depth first, and recounts links
/// (directories: 2 + subdirectories; others: one per name). Returns the old -> new map.
pub fn compact(inodes: Vec<Inode>) -> (Vec<Inode>, HashMap<InodeId, InodeId>) {
    let mut map: HashMap<InodeId, InodeId> = HashMap::new();
    let mut order = Vec::new();
    let mut stack = vec![ROOT];
    let mut links: HashMap<InodeId, u32> = HashMap::new();
    while let Some(id) = stack.pop() {
        if map.contains_key(&id) {
            continue;
        }
        map.insert(id, order.len());
        order.push(id);
        for c in inodes[id].children().iter().rev() {
            *links.entry(c.inode).or_default() += 1;
            stack.push(c.inode);
        }
    }
    let mut slots: Vec<Option<Inode>> = inodes.into_iter().map(Some).collect();
    let mut out: Vec<Inode> = order
        .iter()
        .map(|&old| slots[old].take().expect("visited once"))
        .collect();
    let subdirs: Vec<u32> = out
        .iter()
        .map(|i| {
            i.children()
                .iter()
                .filter(|c| out[map[&c.inode]].is_dir())
                .count() as u32
        })
        .collect();
    for (new, ino) in out.iter_mut().enumerate() {
        if let InodeKind::Dir(list) = &mut ino.kind {
            for c in list.iter_mut() {
                c.inode = map[&c.inode];
            }
            ino.nlink = 2 + subdirs[new];
        } else {
            ino.nlink = links.get(&order[new]).copied().unwrap_or(1);
        }
    }
    (out, map)
}
