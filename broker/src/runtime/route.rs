//! The engine's [`Route`] over the in-process mesh: the seam where a
//! cluster backend would sit beside it.

use std::rc::Rc;

use ringcast_core::{Msg, Route, ShardId};

use super::mesh::Mesh;

pub struct MeshRoute(pub Rc<Mesh<Msg>>);

impl Route for MeshRoute {
    fn try_send(&mut self, dst: ShardId, msg: Msg) -> Result<(), Msg> {
        self.0.try_send(dst, msg)
    }

    fn send(&mut self, dst: ShardId, msg: Msg) {
        self.0.send(dst, msg)
    }
}
