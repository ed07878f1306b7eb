// The C side of perennial-dist: a process group of libtorch's c10d (TCPStore for the
// rendezvous, ProcessGroupGloo for the collectives) behind five C functions. Every
// function catches every exception and reports it through `err` (a caller's buffer of
// `err_len` bytes), so no C++ exception crosses into Rust.
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>

#include <chrono>
#include <cstring>
#include <string>
#include <vector>

namespace {

void set_error(char* err, size_t len, const char* msg) {
  if (err != nullptr && len > 0) {
    std::strncpy(err, msg, len - 1);
    err[len - 1] = '\0';
  }
}

}  // namespace

struct PerennialGroup {
  c10::intrusive_ptr<c10d::Store> store;
  c10::intrusive_ptr<c10d::ProcessGroupGloo> pg;
};

#define PERENNIAL_TRY(fail, ...)                                    \
  try {                                                             \
    __VA_ARGS__                                                     \
  } catch (const c10::Error& e) {                                   \
    set_error(err, err_len, e.what_without_backtrace());            \
    return fail;                                                    \
  } catch (const std::exception& e) {                               \
    set_error(err, err_len, e.what());                              \
    return fail;                                                    \
  } catch (...) {                                                   \
    set_error(err, err_len, "unknown C++ exception");              \
    return fail;                                                    \
  }

extern "C" {

// Joins the group of `world` ranks whose TCPStore rank 0 serves at master:port.
// The Gloo device binds to `iface` when it is not empty (a network interface name),
// else to `bind_host` when that is not empty, else to this machine's hostname (the
// loopback address when that does not resolve). Returns null on failure.
PerennialGroup* perennial_dist_gloo_new(const char* master, uint16_t port, int rank,
                                        int world, int64_t timeout_ms, const char* iface,
                                        const char* bind_host, char* err,
                                        size_t err_len) {
  PERENNIAL_TRY(nullptr, {
    c10d::TCPStoreOptions o;
    o.port = port;
    o.isServer = rank == 0;
    o.numWorkers = static_cast<std::size_t>(world);
    o.waitWorkers = true;
    o.timeout = std::chrono::milliseconds(timeout_ms);
    auto store = c10::make_intrusive<c10d::TCPStore>(std::string(master), o);
    auto opts =
        c10d::ProcessGroupGloo::Options::create(std::chrono::milliseconds(timeout_ms));
    if (iface != nullptr && iface[0] != '\0') {
      opts->devices.push_back(
          c10d::ProcessGroupGloo::createDeviceForInterface(std::string(iface)));
    } else if (bind_host != nullptr && bind_host[0] != '\0') {
      opts->devices.push_back(
          c10d::ProcessGroupGloo::createDeviceForHostname(std::string(bind_host)));
    } else {
      opts->devices.push_back(c10d::ProcessGroupGloo::createDefaultDevice());
    }
    auto pg = c10::make_intrusive<c10d::ProcessGroupGloo>(store, rank, world, opts);
    // Gloo's constructor returns once this rank's side of every pair is connected, which
    // can be before a peer has finished its own handshake: a rank that then dropped the
    // group at once (a refused setting, a crash) would close sockets under that peer,
    // which fails with "Connection closed by peer" instead of the peer's own answer. A
    // barrier returns on a rank only once every rank's constructor has returned.
    pg->barrier()->wait();
    return new PerennialGroup{store, pg};
  })
}

// Sums the (dense, contiguous, CPU) tensor `t` (an at::Tensor*) over the ranks, in place.
int perennial_dist_all_reduce_sum(PerennialGroup* g, void* t, char* err, size_t err_len) {
  PERENNIAL_TRY(1, {
    std::vector<at::Tensor> v{*static_cast<at::Tensor*>(t)};
    c10d::AllreduceOptions o;
    o.reduceOp = c10d::ReduceOp::SUM;
    g->pg->allreduce(v, o)->wait();
    return 0;
  })
}

// Overwrites `t` on every rank with rank `root`'s `t`.
int perennial_dist_broadcast(PerennialGroup* g, void* t, int root, char* err,
                             size_t err_len) {
  PERENNIAL_TRY(1, {
    std::vector<at::Tensor> v{*static_cast<at::Tensor*>(t)};
    c10d::BroadcastOptions o;
    o.rootRank = root;
    o.rootTensor = 0;
    g->pg->broadcast(v, o)->wait();
    return 0;
  })
}

// Returns once every rank has called it.
int perennial_dist_barrier(PerennialGroup* g, char* err, size_t err_len) {
  PERENNIAL_TRY(1, {
    g->pg->barrier()->wait();
    return 0;
  })
}

// Leaves the group (destroys the process group, then the store).
void perennial_dist_free(PerennialGroup* g) {
  try {
    delete g;
  } catch (...) {
  }
}

}  // extern "C"
