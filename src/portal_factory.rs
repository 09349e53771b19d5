//! `corolet.portal.PortalTaskFactory`: the asyncio task factory `install()` sets.
//!
//! Model: the loop calls the factory as `factory(loop, coro, **kwargs)` for every task it
//! creates; the factory wraps `coro` in a [`Portal`] (active from its first step when `eager`,
//! else dormant until `ensure_portal()`) and makes the task as the loop would have: through
//! the factory that was set before (`chained`: asyncio's `eager_task_factory`, a tracer's),
//! else `asyncio.Task(portal, loop=loop, **kwargs)`. Native, because it runs once per task:
//! a Python factory cost a frame and a keyword parse for each.
//!
//! Invariants:
//! - Every keyword (`name`, `context`, `eager_start`) reaches the task unchanged.
//! - `chained` and `eager` are plain attributes: `install()` changes `eager` for tasks made
//!   after it, `uninstall()` puts `chained` back.

use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyDict, PyTuple};
use pyo3::{PyTraverseError, PyVisit};

use crate::portal::Portal;

/// `asyncio.Task`, looked up once.
static TASK: PyOnceLock<Py<PyAny>> = PyOnceLock::new();

#[pyclass(module = "corolet.portal", name = "PortalTaskFactory")]
pub struct PortalTaskFactory {
    /// The task factory that was set before (None: `asyncio.Task`).
    #[pyo3(get, set)]
    chained: Option<Py<PyAny>>,
    /// Whether new tasks' portals are active from their first step.
    #[pyo3(get, set)]
    eager: bool,
}

#[pymethods]
impl PortalTaskFactory {
    #[new]
    fn new(chained: Option<Py<PyAny>>, eager: bool) -> Self {
        PortalTaskFactory { chained, eager }
    }

    #[pyo3(signature = (event_loop, coro, **kwargs))]
    fn __call__(
        &self,
        py: Python<'_>,
        event_loop: Bound<'_, PyAny>,
        coro: Py<PyAny>,
        kwargs: Option<Bound<'_, PyDict>>,
    ) -> PyResult<Py<PyAny>> {
        let portal = Py::new(py, Portal::of(coro, self.eager))?;
        if let Some(chained) = &self.chained {
            let args = PyTuple::new(py, [event_loop.unbind(), portal.into_any()])?;
            return Ok(chained.bind(py).call(args, kwargs.as_ref())?.unbind());
        }
        let task = TASK.get_or_try_init(py, || {
            Ok::<_, PyErr>(py.import("asyncio")?.getattr("Task")?.unbind())
        })?;
        // The dict PyO3 made for this call's keywords is ours to add to.
        let kwargs = kwargs.unwrap_or_else(|| PyDict::new(py));
        kwargs.set_item("loop", event_loop)?;
        Ok(task.bind(py).call((portal,), Some(&kwargs))?.unbind())
    }

    fn __repr__(&self, py: Python<'_>) -> PyResult<String> {
        let chained = match &self.chained {
            Some(c) => c.bind(py).repr()?.to_string(),
            None => "None".into(),
        };
        Ok(format!(
            "<corolet.portal.PortalTaskFactory eager={} chained={chained}>",
            if self.eager { "True" } else { "False" }
        ))
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        if let Some(c) = &self.chained {
            visit.call(c)?;
        }
        Ok(())
    }

    fn __clear__(&mut self) {
        self.chained = None;
    }
}
