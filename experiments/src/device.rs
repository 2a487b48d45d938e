//! The compiled-in backends and the `--device` flag.
//!
//! Cargo features decide which backends exist in a build (`flex` by default; `ndarray`, `wgpu`,
//! `cuda` on request); `--device NAME` or the `BURN_DEVICE` environment variable picks one at
//! run time. Devices are constructed explicitly: burn's `Device::default()` prefers any GPU
//! backend compiled in, and on a machine without a GPU wgpu silently falls back to a software
//! rasteriser that is orders of magnitude slower than the CPU backend. We detect that case and
//! say so.

use std::fmt;
use std::str::FromStr;

use burn::tensor::Device;

/// A backend vlalign can be built with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// Pure-Rust CPU backend (default).
    Flex,
    /// The deprecated ndarray CPU backend, kept for comparison.
    Ndarray,
    /// WGPU: Vulkan, Metal, DirectX or WebGPU.
    Wgpu,
    /// NVIDIA CUDA.
    Cuda,
}

impl Backend {
    /// Every backend, in the order a device is picked when none is asked for.
    pub const ALL: [Backend; 4] = [
        Backend::Cuda,
        Backend::Wgpu,
        Backend::Flex,
        Backend::Ndarray,
    ];

    /// The feature / flag name.
    pub fn name(self) -> &'static str {
        match self {
            Backend::Flex => "flex",
            Backend::Ndarray => "ndarray",
            Backend::Wgpu => "wgpu",
            Backend::Cuda => "cuda",
        }
    }

    /// Whether this build has the backend.
    pub fn compiled(self) -> bool {
        match self {
            Backend::Flex => cfg!(feature = "flex"),
            Backend::Ndarray => cfg!(feature = "ndarray"),
            Backend::Wgpu => cfg!(feature = "wgpu"),
            Backend::Cuda => cfg!(feature = "cuda"),
        }
    }
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Backends compiled into this build, in preference order.
pub fn compiled_backends() -> Vec<Backend> {
    Backend::ALL.into_iter().filter(|b| b.compiled()).collect()
}

/// Why no device could be opened.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    /// The name is not a backend at all.
    #[error(
        "unknown device '{name}': expected one of flex, ndarray, wgpu, cuda (cuda:N and wgpu:N pick a device; the CPU backends have one)"
    )]
    Unknown {
        /// What was asked for.
        name: String,
    },
    /// The backend exists but this build lacks its feature.
    #[error(
        "device '{backend}' is not compiled into this build (compiled: {compiled}); rebuild with \
         `--features {backend}`"
    )]
    NotCompiled {
        /// What was asked for.
        backend: Backend,
        /// What this build has.
        compiled: String,
    },
    /// The backend is compiled in but its device could not be opened (no driver, no GPU).
    #[error("device '{spec}' could not be opened: {reason}")]
    Unavailable {
        /// What was asked for.
        spec: DeviceSpec,
        /// What the backend said.
        reason: String,
    },
}

/// Run `f`, turning a panic into a message (the backends' device set-up panics where a driver
/// is missing, e.g. cudarc without `libcuda`, often on a runtime thread of their own so that the
/// caller sees only a closed channel): the first panic message of any thread while `f` runs,
/// with the panic hook silenced meanwhile.
#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
fn without_panicking<T>(f: impl FnOnce() -> T + std::panic::UnwindSafe) -> Result<T, String> {
    use std::sync::{Arc, Mutex};
    let seen: Arc<Mutex<Vec<String>>> = Arc::default();
    let hook = std::panic::take_hook();
    let record = seen.clone();
    std::panic::set_hook(Box::new(move |info| {
        let message = info.payload_as_str().unwrap_or("the backend panicked");
        if let Ok(mut seen) = record.lock() {
            seen.push(message.to_string());
        }
    }));
    let result = std::panic::catch_unwind(f);
    std::panic::set_hook(hook);
    result.map_err(|_| {
        seen.lock()
            .ok()
            .and_then(|s| s.first().cloned())
            .unwrap_or_else(|| "the backend panicked".into())
    })
}

/// A parsed `--device` value: a backend and, for CUDA and wgpu, a device index.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeviceSpec {
    /// Backend.
    pub backend: Backend,
    /// Device index: CUDA's ordinal (none: 0), wgpu's discrete adapter (none: wgpu's default
    /// adapter); the CPU backends have none.
    pub index: Option<usize>,
}

impl FromStr for DeviceSpec {
    type Err = DeviceError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let lower = s.trim().to_ascii_lowercase();
        let (name, index) = match lower.split_once(':') {
            Some((name, idx)) => (
                name.to_string(),
                Some(idx.parse::<usize>().map_err(|_| DeviceError::Unknown {
                    name: s.to_string(),
                })?),
            ),
            None => (lower.clone(), None),
        };
        let backend = match name.as_str() {
            "flex" | "cpu" => Backend::Flex,
            "ndarray" => Backend::Ndarray,
            "wgpu" | "vulkan" | "metal" => Backend::Wgpu,
            "cuda" | "gpu" => Backend::Cuda,
            _ => {
                return Err(DeviceError::Unknown {
                    name: s.to_string(),
                });
            }
        };
        if index.is_some() && matches!(backend, Backend::Flex | Backend::Ndarray) {
            // The CPU backends have one device: an index would be silently ignored.
            return Err(DeviceError::Unknown {
                name: s.to_string(),
            });
        }
        Ok(DeviceSpec { backend, index })
    }
}

impl fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.backend, self.index) {
            (Backend::Cuda, i) => write!(f, "cuda:{}", i.unwrap_or(0)),
            (b, Some(i)) => write!(f, "{b}:{i}"),
            (b, None) => write!(f, "{b}"),
        }
    }
}

/// An opened device and what we know about it.
#[derive(Clone, Debug)]
pub struct SelectedDevice {
    /// The device (without autodiff; call `.autodiff()` to train).
    pub device: Device,
    /// What was selected.
    pub spec: DeviceSpec,
    /// The adapter's own name, where the backend reports one.
    pub adapter: Option<String>,
    /// A warning to print (e.g. a software rasteriser behind wgpu).
    pub warning: Option<String>,
}

/// Open the device named by `requested` (the `--device` flag), else by `BURN_DEVICE`, else the
/// first compiled backend in [`Backend::ALL`] order (a GPU when one is compiled in).
pub fn select_device(requested: Option<&str>) -> Result<SelectedDevice, DeviceError> {
    let env = std::env::var("BURN_DEVICE").ok().filter(|s| !s.is_empty());
    let spec = match requested.or(env.as_deref()) {
        Some(name) => name.parse::<DeviceSpec>()?,
        None => DeviceSpec {
            backend: compiled_backends().first().copied().ok_or_else(|| {
                DeviceError::NotCompiled {
                    backend: Backend::Flex,
                    compiled: "none".into(),
                }
            })?,
            index: None,
        },
    };
    open(spec)
}

fn not_compiled(backend: Backend) -> DeviceError {
    DeviceError::NotCompiled {
        backend,
        compiled: compiled_backends()
            .iter()
            .map(|b| b.name())
            .collect::<Vec<_>>()
            .join(", "),
    }
}

fn open(spec: DeviceSpec) -> Result<SelectedDevice, DeviceError> {
    let selected =
        |device: Device, adapter: Option<String>, warning: Option<String>| SelectedDevice {
            device,
            spec,
            adapter,
            warning,
        };
    match spec.backend {
        Backend::Flex => {
            #[cfg(feature = "flex")]
            return Ok(selected(Device::flex(), Some("CPU (flex)".into()), None));
        }
        Backend::Ndarray => {
            #[cfg(feature = "ndarray")]
            #[allow(deprecated)]
            return Ok(selected(
                Device::ndarray(),
                Some("CPU (ndarray, deprecated)".into()),
                None,
            ));
        }
        Backend::Wgpu => {
            #[cfg(feature = "wgpu")]
            {
                let kind = match spec.index {
                    Some(i) => burn::tensor::DeviceKind::DiscreteGpu(i),
                    None => burn::tensor::DeviceKind::DefaultDevice,
                };
                let device = Device::wgpu(kind);
                let identity = device.identity();
                let name = identity.as_ref().map(|i| i.name.clone());
                let software = identity.as_ref().is_some_and(|i| i.physical.is_none());
                let warning = software.then(|| {
                    format!(
                        "wgpu found no GPU and runs on a software rasteriser ({}): expect it to \
                         be far slower than `--device flex`",
                        name.as_deref().unwrap_or("unknown adapter")
                    )
                });
                return Ok(selected(device, name, warning));
            }
        }
        Backend::Cuda => {
            #[cfg(feature = "cuda")]
            {
                let index = spec.index.unwrap_or(0);
                // cudarc panics where the CUDA driver library cannot be loaded: say so instead.
                let opened = without_panicking(move || {
                    let device = Device::cuda(index);
                    let name = device.identity().map(|i| i.name);
                    (device, name)
                });
                return match opened {
                    Ok((device, name)) => Ok(selected(device, name, None)),
                    Err(reason) => Err(DeviceError::Unavailable { spec, reason }),
                };
            }
        }
    }
    #[allow(unreachable_code)]
    Err(not_compiled(spec.backend))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_names() {
        assert_eq!(
            "cuda:1".parse::<DeviceSpec>().unwrap(),
            DeviceSpec {
                backend: Backend::Cuda,
                index: Some(1)
            }
        );
        assert_eq!("wgpu:1".parse::<DeviceSpec>().unwrap().index, Some(1));
        assert_eq!(
            "wgpu:1".parse::<DeviceSpec>().unwrap().to_string(),
            "wgpu:1"
        );
        assert_eq!("wgpu".parse::<DeviceSpec>().unwrap().index, None);
        assert_eq!("cuda".parse::<DeviceSpec>().unwrap().to_string(), "cuda:0");
        // The CPU backends have one device.
        assert!("flex:1".parse::<DeviceSpec>().is_err());
        assert_eq!("FLEX".parse::<DeviceSpec>().unwrap().backend, Backend::Flex);
        assert!(matches!(
            "tpu".parse::<DeviceSpec>(),
            Err(DeviceError::Unknown { .. })
        ));
        assert!("cuda:x".parse::<DeviceSpec>().is_err());
    }

    #[test]
    fn default_build_opens_flex() {
        if cfg!(feature = "flex") && !cfg!(feature = "wgpu") && !cfg!(feature = "cuda") {
            let s = select_device(Some("flex")).unwrap();
            assert_eq!(s.spec.backend, Backend::Flex);
        }
    }

    #[test]
    fn missing_backend_is_an_error_naming_the_feature() {
        let caught = without_panicking(|| panic!("no driver")).unwrap_err();
        assert_eq!(caught, "no driver");
        // A runtime thread's panic is the cause, not the caller's closed channel.
        let caught = without_panicking(|| {
            let (tx, rx) = std::sync::mpsc::channel::<()>();
            std::thread::spawn(move || {
                let _tx = tx;
                panic!("Unable to dynamically load the cuda shared library");
            });
            rx.recv().unwrap()
        })
        .unwrap_err();
        assert_eq!(caught, "Unable to dynamically load the cuda shared library");
        assert_eq!(without_panicking(|| 3), Ok(3));
        if !cfg!(feature = "cuda") {
            let e = select_device(Some("cuda")).unwrap_err().to_string();
            assert!(e.contains("--features cuda"), "{e}");
        }
    }
}
