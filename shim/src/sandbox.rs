//! Pod-level state owned by the sandbox's shim: which containers belong to the
//! Pod and where each runs. (The network halves join this later.)

use std::collections::BTreeMap;

use crate::{
    error::{Error, Result},
    placement::Placement,
};

#[derive(Debug, Default)]
pub struct Sandbox {
    /// The sandbox (pause) container, once created through this shim.
    id: Option<String>,
    members: BTreeMap<String, Placement>,
}

impl Sandbox {
    /// Records a new container; the sandbox container itself must run on the CPU.
    pub fn admit(&mut self, id: &str, is_sandbox: bool, placement: Placement) -> Result<()> {
        if self.members.contains_key(id) {
            return Err(Error::AlreadyExists(format!("container {id}")));
        }
        if is_sandbox {
            if placement != Placement::Cpu {
                return Err(Error::FailedPrecondition(
                    "the Pod sandbox must run on the CPU".into(),
                ));
            }
            self.id = Some(id.to_string());
        }
        self.members.insert(id.to_string(), placement);
        Ok(())
    }

    pub fn remove(&mut self, id: &str) {
        self.members.remove(id);
        if self.id.as_deref() == Some(id) {
            self.id = None;
        }
    }

    pub fn sandbox_id(&self) -> Option<&str> {
        self.id.as_deref()
    }

    pub fn placement_of(&self, id: &str) -> Option<Placement> {
        self.members.get(id).copied()
    }

    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    pub fn len(&self) -> usize {
        self.members.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members_are_tracked_with_their_placement() {
        let mut sut = Sandbox::default();
        sut.admit("pause", true, Placement::Cpu).unwrap();
        sut.admit("app", false, Placement::Cpu).unwrap();
        assert_eq!(sut.sandbox_id(), Some("pause"));
        assert_eq!(sut.placement_of("app"), Some(Placement::Cpu));
        assert_eq!(sut.len(), 2);
        sut.remove("app");
        sut.remove("pause");
        assert!(sut.is_empty());
        assert_eq!(sut.sandbox_id(), None);
    }

    #[test]
    fn duplicate_ids_are_refused() {
        let mut sut = Sandbox::default();
        sut.admit("a", false, Placement::Cpu).unwrap();
        assert!(matches!(
            sut.admit("a", false, Placement::Cpu),
            Err(Error::AlreadyExists(_))
        ));
    }

    #[test]
    fn sandbox_on_dpu_is_refused() {
        let mut sut = Sandbox::default();
        assert!(sut.admit("pause", true, Placement::Dpu).is_err());
    }
}
