// A replayed forward's program (replay.cpp parses it from Python): steps that read and write numbered slots, run in
// order with every conv on every thread (serial), or phase by phase with each phase's lanes at once, one thread
// each (branch-parallel), or whichever of the two the first call for an input shape and thread count measured
// faster (automatic). Built only with oneDNN, whose kept convolutions (onednn_conv.h) are the steps' convs.
#pragma once

#ifdef HRNET_FAST_WITH_ONEDNN

#include "cpu/onednn_conv.h"

#include <ATen/ATen.h>

#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <tuple>
#include <vector>

namespace hrnet_fast {
namespace replay {

struct Step {
  enum class Kind { kConv, kFuse } kind;
  std::vector<int> reads;    // conv: x, residual (or -1); fuse: x, low_res..., same_res...
  int out = -1;
  std::vector<int> release;           // slots read for the last time here, in the serial order
  std::vector<int> release_parallel;  // those read here after every other read in any branch-parallel run
  // conv
  std::shared_ptr<onednn::Conv> conv;
  at::Tensor weight;         // the module's buffer (its TensorImpl): checked, never read by the step
  const void* weight_ptr = nullptr;
  int64_t weight_version = 0;
  at::Tensor bias;           // the module's buffer, read at each run as the module path does
  bool relu = false, residual_is_free = false;
  // fuse
  size_t low = 0;            // reads[1, 1 + low) are low_res, the rest same_res
  std::string mode;
  bool align_corners = false;
};

// Steps that may run at once: each lane's steps in order, the lanes in any order or concurrently (no lane reads
// what another writes: replay.py's Builder checks that against the steps' slots). A phase with one lane runs its
// steps with every thread; the phases run one after another.
struct Phase {
  std::vector<std::vector<int>> lanes;  // step indices
  std::vector<int> release;             // slots several lanes read last, dropped after the phase
};

// How a program runs: the steps in order, each conv on every thread (serial), the lanes of each phase
// concurrently on one thread each (parallel), or whichever the first call for an input shape and thread count
// measured faster (automatic).
enum class Mode { kSerial = 0, kParallel = 1, kAutomatic = 2 };

using Slots = std::vector<at::Tensor>;

inline int64_t version_of(const at::Tensor& t) { return t.is_inference() ? -1 : static_cast<int64_t>(t._version()); }

class Program {
 public:
  // (batch, height, width of the first input, threads): what a decision holds for
  using Key = std::tuple<int64_t, int64_t, int64_t, int>;
  struct Decision {
    bool parallel = false;
    double serial_ms = 0, parallel_ms = 0;  // the faster of two timed runs each; 0 where not measured
  };

  Program(std::vector<Step> steps, int inputs, int slots, std::vector<int> outputs, at::ScalarType dtype,
          std::vector<Phase> phases, Mode mode)
      : steps_(std::move(steps)), inputs_(inputs), slots_(slots), outputs_(std::move(outputs)), dtype_(dtype),
        phases_(std::move(phases)), mode_(mode) {}

  int inputs() const { return inputs_; }
  at::ScalarType dtype() const { return dtype_; }
  Mode mode() const { return mode_; }

  // Whether some phase has lanes to run at once.
  bool splits() const;

  std::map<Key, Decision> decisions() const;

  // Every conv's weight is the tensor its primitives were made from, unchanged since (pointer and version).
  bool weights_current() const;

  // The outputs, or nullopt where a step does not take its input as given.
  std::optional<Slots> run(const Slots& inputs) const;

 private:
  std::optional<Slots> decide(const Slots& inputs, int threads, const Key& key) const;
  std::optional<Slots> outputs_of(std::optional<Slots> slots) const;
  bool run_step(const Step& s, Slots& slots, onednn::Exec& exec, bool parallel) const;
  std::optional<Slots> run_serial(Slots slots) const;
  std::optional<Slots> run_parallel(Slots slots, int threads) const;

  std::vector<Step> steps_;
  int inputs_, slots_;
  std::vector<int> outputs_;
  at::ScalarType dtype_;
  std::vector<Phase> phases_;
  Mode mode_;
  mutable std::mutex mutex_;
  mutable std::map<Key, Decision> decisions_;
};

}  // namespace replay
}  // namespace hrnet_fast

#endif  // HRNET_FAST_WITH_ONEDNN
