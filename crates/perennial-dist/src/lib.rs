//! Data-parallel collectives for Perennial: a small binding to the distributed engine
//! that ships inside libtorch (c10d), not a transport of our own.
//!
//! A [`ProcessGroup`] is c10d's `TCPStore` (the rendezvous, served by rank 0 at
//! `MASTER_ADDR:MASTER_PORT`) and `ProcessGroupGloo` (the collectives, on CPU tensors):
//! [`ProcessGroup::all_reduce_sum`], [`ProcessGroup::broadcast`] and
//! [`ProcessGroup::barrier`]. The ranks find each other from the environment
//! `torchrun`, SLURM wrappers and `perennial launch` all set ([`Env::from_env`]).
//!
//! The C++ side (`src/shim.cpp`) is compiled by `build.rs` against the libtorch `tch`
//! links, with Gloo's headers from Debian's `libgloo-dev`. When either is missing the
//! crate still builds, without a backend: [`backend_available`] is false and
//! [`ProcessGroup::init`] returns [`Error::NotBuilt`].
//!
//! Why c10d rather than MPI (the `mpi` crate): c10d is already in the libtorch we link
//! (no second communication library to install and match), it reads and writes the
//! tensors' own memory (MPI would copy every gradient into a host buffer), and its NCCL
//! group, in the same library, is the GPU path. See docs/distributed.md.
//!
//! # Safety
//! All unsafe code of the crate is in the private `ffi` module and the four methods of
//! [`ProcessGroup`] that call it. The invariants: the group pointer is created by
//! `perennial_dist_gloo_new` and freed once, in `Drop`; a tensor pointer is `tch`'s own
//! `at::Tensor*` and outlives the call; the C++ functions catch every exception and
//! report it through an error buffer, so no unwinding crosses the boundary.
#![allow(unsafe_code)]

use std::time::Duration;

use tch::{Device, Tensor};

/// What can go wrong joining a group or running a collective.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// This build has no distributed backend.
    #[error(
        "this build has no distributed backend: it was compiled without Gloo's headers \
         (install them with scripts/install-gloo.sh, or Debian's libgloo-dev, and rebuild)"
    )]
    NotBuilt,
    /// A variable of the distributed environment is missing or malformed.
    #[error("{var}: {reason}")]
    Env {
        /// The variable.
        var: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// A tensor the backend cannot take.
    #[error("{0}")]
    Tensor(String),
    /// The backend (c10d, Gloo) failed: a rank that did not come, a timeout, a closed
    /// connection.
    #[error("distributed backend: {0}")]
    Backend(String),
}

/// The crate's result type.
pub type Result<T> = std::result::Result<T, Error>;

/// Whether this build has a distributed backend (Gloo).
pub fn backend_available() -> bool {
    cfg!(perennial_gloo)
}

/// Where this process stands in a distributed run, from the environment `torchrun`
/// sets: `RANK`, `WORLD_SIZE`, `MASTER_ADDR`, `MASTER_PORT`, and `LOCAL_RANK` (this
/// rank's index on its machine, for choosing its GPU).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Env {
    /// This process's rank, `0..world_size`.
    pub rank: usize,
    /// How many ranks there are.
    pub world_size: usize,
    /// This process's rank on its machine (`LOCAL_RANK`, else `rank`).
    pub local_rank: usize,
    /// The address of rank 0's rendezvous store.
    pub master_addr: String,
    /// Its port.
    pub master_port: u16,
    /// `GLOO_SOCKET_IFNAME`: the network interface Gloo binds to, when set.
    pub socket_ifname: Option<String>,
}

impl Env {
    /// The distributed environment of this process: `None` when `WORLD_SIZE` is not
    /// set or is 1 (a plain, single-process run); an error when it is larger but the
    /// rest is missing or malformed. `GLOO_SOCKET_IFNAME` may list interfaces with
    /// commas, as PyTorch takes it; the first is used.
    pub fn from_env() -> Result<Option<Env>> {
        Self::from_vars(|k| std::env::var(k).ok())
    }

    /// [`Env::from_env`] over any source of variables.
    pub fn from_vars(get: impl Fn(&str) -> Option<String>) -> Result<Option<Env>> {
        let Some(world) = get("WORLD_SIZE") else {
            return Ok(None);
        };
        let num = |var: &'static str, text: String| -> Result<usize> {
            text.trim().parse().map_err(|_| Error::Env {
                var,
                reason: format!("not a non-negative integer: {text:?}"),
            })
        };
        let world_size = num("WORLD_SIZE", world)?;
        if world_size == 0 {
            return Err(Error::Env {
                var: "WORLD_SIZE",
                reason: "must be at least 1".into(),
            });
        }
        if world_size == 1 {
            // A world of one is a plain run, whatever else the environment says.
            return Ok(None);
        }
        let required = |var: &'static str| {
            get(var).ok_or(Error::Env {
                var,
                reason: "not set (WORLD_SIZE is, so this is a distributed run)".into(),
            })
        };
        let rank = num("RANK", required("RANK")?)?;
        if rank >= world_size {
            return Err(Error::Env {
                var: "RANK",
                reason: format!("{rank} is not below WORLD_SIZE {world_size}"),
            });
        }
        let local_rank = match get("LOCAL_RANK") {
            Some(v) => num("LOCAL_RANK", v)?,
            None => rank,
        };
        let master_addr = required("MASTER_ADDR")?;
        if master_addr.trim().is_empty() {
            return Err(Error::Env {
                var: "MASTER_ADDR",
                reason: "empty".into(),
            });
        }
        let port = required("MASTER_PORT")?;
        let master_port = port
            .trim()
            .parse::<u16>()
            .ok()
            .filter(|&p| p > 0)
            .ok_or(Error::Env {
                var: "MASTER_PORT",
                reason: format!("not a port number (1 to 65535): {port:?}"),
            })?;
        Ok(Some(Env {
            rank,
            world_size,
            local_rank,
            master_addr: master_addr.trim().to_string(),
            master_port,
            socket_ifname: get("GLOO_SOCKET_IFNAME")
                .and_then(|s| s.split(',').next().map(|f| f.trim().to_string()))
                .filter(|s| !s.is_empty()),
        }))
    }

    /// Whether the rendezvous is on this machine's loopback interface (then Gloo binds
    /// there too, whatever the hostname resolves to).
    pub fn is_loopback(&self) -> bool {
        let a = self.master_addr.as_str();
        a == "localhost" || a == "::1" || a.starts_with("127.")
    }
}

#[cfg(perennial_gloo)]
mod ffi {
    use std::os::raw::{c_char, c_int, c_void};

    #[repr(C)]
    pub struct Group {
        _private: [u8; 0],
    }

    extern "C" {
        #[allow(clippy::too_many_arguments)]
        pub fn perennial_dist_gloo_new(
            master: *const c_char,
            port: u16,
            rank: c_int,
            world: c_int,
            timeout_ms: i64,
            iface: *const c_char,
            bind_host: *const c_char,
            err: *mut c_char,
            err_len: usize,
        ) -> *mut Group;
        pub fn perennial_dist_all_reduce_sum(
            g: *mut Group,
            t: *mut c_void,
            err: *mut c_char,
            err_len: usize,
        ) -> c_int;
        pub fn perennial_dist_broadcast(
            g: *mut Group,
            t: *mut c_void,
            root: c_int,
            err: *mut c_char,
            err_len: usize,
        ) -> c_int;
        pub fn perennial_dist_barrier(g: *mut Group, err: *mut c_char, err_len: usize) -> c_int;
        pub fn perennial_dist_free(g: *mut Group);
    }
}

/// Room for a C++ error message.
#[cfg(perennial_gloo)]
const ERR_LEN: usize = 1024;

#[cfg(perennial_gloo)]
fn message(buf: &[u8]) -> String {
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

/// One rank's membership of a group of processes, with its collectives.
///
/// Collectives are blocking and must be called by every rank in the same order with
/// tensors of the same shape and kind. A group can be used from any thread, one
/// collective at a time (the methods take `&self`; c10d serialises them).
pub struct ProcessGroup {
    #[cfg(perennial_gloo)]
    raw: std::ptr::NonNull<ffi::Group>,
    rank: usize,
    world_size: usize,
}

// SAFETY: c10d's ProcessGroupGloo and TCPStore are thread-safe objects (torch.distributed
// uses them from any Python thread); the handle is only a pointer to them.
unsafe impl Send for ProcessGroup {}
// SAFETY: as above; collectives on one group are queued by c10d in call order.
unsafe impl Sync for ProcessGroup {}

impl std::fmt::Debug for ProcessGroup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProcessGroup")
            .field("rank", &self.rank)
            .field("world_size", &self.world_size)
            .finish()
    }
}

impl ProcessGroup {
    /// Joins the group `env` describes: rank 0 serves the rendezvous store, every rank
    /// connects to it and waits (up to `timeout`) for the others. Returns only once every
    /// rank has joined, so a rank may drop the group at once without breaking a peer's
    /// join. The same `timeout` bounds every later collective.
    pub fn init(env: &Env, timeout: Duration) -> Result<Self> {
        #[cfg(perennial_gloo)]
        {
            use std::ffi::CString;
            let cstr = |var: &'static str, s: &str| {
                CString::new(s).map_err(|_| Error::Env {
                    var,
                    reason: "contains a NUL byte".into(),
                })
            };
            let master = cstr("MASTER_ADDR", &env.master_addr)?;
            let iface = cstr(
                "GLOO_SOCKET_IFNAME",
                env.socket_ifname.as_deref().unwrap_or(""),
            )?;
            let bind = if env.is_loopback() { "127.0.0.1" } else { "" };
            let bind = cstr("MASTER_ADDR", bind)?;
            let to_int = |v: usize, var| {
                i32::try_from(v).map_err(|_| Error::Env {
                    var,
                    reason: "too large".into(),
                })
            };
            let mut err = vec![0u8; ERR_LEN];
            // SAFETY: every pointer is a live, NUL-terminated string or the error
            // buffer of ERR_LEN bytes; the function catches all C++ exceptions.
            let raw = unsafe {
                ffi::perennial_dist_gloo_new(
                    master.as_ptr(),
                    env.master_port,
                    to_int(env.rank, "RANK")?,
                    to_int(env.world_size, "WORLD_SIZE")?,
                    i64::try_from(timeout.as_millis()).unwrap_or(i64::MAX),
                    iface.as_ptr(),
                    bind.as_ptr(),
                    err.as_mut_ptr().cast(),
                    err.len(),
                )
            };
            match std::ptr::NonNull::new(raw) {
                Some(raw) => Ok(ProcessGroup {
                    raw,
                    rank: env.rank,
                    world_size: env.world_size,
                }),
                None => Err(Error::Backend(format!(
                    "joining the group at {}:{} as rank {} of {}: {}",
                    env.master_addr,
                    env.master_port,
                    env.rank,
                    env.world_size,
                    message(&err)
                ))),
            }
        }
        #[cfg(not(perennial_gloo))]
        {
            let _ = (env, timeout);
            Err(Error::NotBuilt)
        }
    }

    /// This process's rank.
    pub fn rank(&self) -> usize {
        self.rank
    }

    /// How many ranks the group has.
    pub fn world_size(&self) -> usize {
        self.world_size
    }

    /// Replaces `t` on every rank by the sum over the ranks of `t`, in place. `t` must be
    /// a dense, contiguous CPU tensor of the same shape and kind on every rank.
    pub fn all_reduce_sum(&self, t: &mut Tensor) -> Result<()> {
        check(t)?;
        #[cfg(perennial_gloo)]
        {
            let mut err = vec![0u8; ERR_LEN];
            // SAFETY: `self.raw` is a live group; `t.as_mut_ptr()` is tch's at::Tensor*,
            // borrowed mutably for the call; errors come back through the buffer.
            let rc = unsafe {
                ffi::perennial_dist_all_reduce_sum(
                    self.raw.as_ptr(),
                    t.as_mut_ptr().cast(),
                    err.as_mut_ptr().cast(),
                    err.len(),
                )
            };
            if rc != 0 {
                return Err(Error::Backend(format!("all-reduce: {}", message(&err))));
            }
        }
        Ok(())
    }

    /// Overwrites `t` on every rank with rank `root`'s `t` (same shape and kind
    /// everywhere; dense, contiguous, CPU).
    pub fn broadcast(&self, t: &mut Tensor, root: usize) -> Result<()> {
        check(t)?;
        if root >= self.world_size {
            return Err(Error::Tensor(format!(
                "broadcast from rank {root} in a group of {}",
                self.world_size
            )));
        }
        #[cfg(perennial_gloo)]
        {
            let mut err = vec![0u8; ERR_LEN];
            // SAFETY: as in `all_reduce_sum`; `root` fits an int (checked above).
            let rc = unsafe {
                ffi::perennial_dist_broadcast(
                    self.raw.as_ptr(),
                    t.as_mut_ptr().cast(),
                    root as i32,
                    err.as_mut_ptr().cast(),
                    err.len(),
                )
            };
            if rc != 0 {
                return Err(Error::Backend(format!("broadcast: {}", message(&err))));
            }
        }
        Ok(())
    }

    /// Returns once every rank has called it.
    pub fn barrier(&self) -> Result<()> {
        #[cfg(perennial_gloo)]
        {
            let mut err = vec![0u8; ERR_LEN];
            // SAFETY: `self.raw` is a live group; errors come back through the buffer.
            let rc = unsafe {
                ffi::perennial_dist_barrier(self.raw.as_ptr(), err.as_mut_ptr().cast(), err.len())
            };
            if rc != 0 {
                return Err(Error::Backend(format!("barrier: {}", message(&err))));
            }
        }
        Ok(())
    }
}

impl Drop for ProcessGroup {
    fn drop(&mut self) {
        #[cfg(perennial_gloo)]
        // SAFETY: the pointer came from `perennial_dist_gloo_new` and is freed only here.
        unsafe {
            ffi::perennial_dist_free(self.raw.as_ptr())
        };
    }
}

/// The tensors Gloo's collectives take here: dense, contiguous, on the CPU.
fn check(t: &Tensor) -> Result<()> {
    if t.device() != Device::Cpu {
        return Err(Error::Tensor(format!(
            "a tensor on {:?}: this build's collectives (Gloo) take CPU tensors; the NCCL \
             path for CUDA tensors is not built yet",
            t.device()
        )));
    }
    if !t.is_contiguous() {
        return Err(Error::Tensor(
            "a non-contiguous tensor (call .contiguous() first)".into(),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests;
