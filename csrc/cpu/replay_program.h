// A replayed forward's program (replay.cpp parses it from Python): steps that read and write numbered slots, run in
// order with every conv on every thread (serial), or as a dependency graph, each step on one thread as soon as
// what it reads is written, several at once (branch-parallel), or whichever of the two the first call for an
// input shape and thread count measured faster (automatic). Built only with oneDNN, whose kept convolutions
// (onednn_conv.h) are the steps' convs.
#pragma once

#ifdef HRNET_FAST_WITH_ONEDNN

#include "cpu/onednn_conv.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <atomic>
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
  std::vector<int> release;  // slots read for the last time here, in the serial order
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

// Consecutive steps (in the serial order) that a parallel run treats alike: `at_once`, steps some of which can run
// at the same time, run on a team of threads, one thread a step; else a chain, each step waiting for the one
// before, run one after another with every thread on each step.
struct Segment {
  bool at_once = false;
  int begin = 0, end = 0;  // step indices [begin, end)
  int width = 1;           // the most of its steps on one level (longest path from its first steps)
};

// The steps' dependency graph, from the slots they read and write: a step waits for the steps writing what it
// reads, and a conv summing its residual in place also for every other step reading that residual. Edges go from
// an earlier step to a later one, so the serial order is one of the graph's orders. A step that every other step
// comes before or after ends a segment of steps that can run at once and is a chain step.
struct Graph {
  std::vector<std::vector<int>> successors;  // per step
  std::vector<int> waits_in_segment;         // per step: how many steps of its own segment it waits for
  std::vector<std::vector<int>> reads;       // per step: the slots it reads, each once
  std::vector<int> readers;                  // per slot: how many steps read it
  std::vector<char> kept;                    // per slot: an output, never dropped
  std::vector<Segment> segments;             // in order, covering every step
  std::vector<int> segment_of;               // per step
};

// The graph of `steps`, or the reason they are not a program: a slot read before any step writes it, written twice
// or over an input, or a residual summed in place that is an input, an output, the conv's own input or read by a
// later step.
std::optional<Graph> graph_of(const std::vector<Step>& steps, int inputs, int slots, const std::vector<int>& outputs,
                              std::string& why);

// How a program runs: the steps in order, each conv on every thread (serial), the graph's ready steps at once on
// one thread each where steps can run at once and chains as in serial (parallel), or whichever the first call for
// an input shape and thread count measured faster (automatic).
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
          Graph graph, Mode mode);

  int inputs() const { return inputs_; }
  at::ScalarType dtype() const { return dtype_; }
  Mode mode() const { return mode_; }

  // Whether some steps can run at once.
  bool splits() const {
    return std::any_of(graph_.segments.begin(), graph_.segments.end(), [](const Segment& s) { return s.at_once; });
  }
  const Graph& graph() const { return graph_; }

  std::map<Key, Decision> decisions() const;

  // Every conv's weight is the tensor its primitives were made from, unchanged since (pointer and version).
  bool weights_current() const;

  // The outputs, or nullopt where a step does not take its input as given.
  std::optional<Slots> run(const Slots& inputs) const;

 private:
  std::optional<Slots> decide(const Slots& inputs, int threads, const Key& key) const;
  std::optional<Slots> outputs_of(std::optional<Slots> slots) const;
  bool run_step(const Step& s, Slots& slots, onednn::Exec& exec) const;
  std::optional<Slots> run_serial(Slots slots) const;
  std::optional<Slots> run_parallel(Slots slots, int threads, const Key& key) const;
  // One segment's steps on a team of `team` threads (see run_parallel), each step's time into `step_ms`.
  bool run_at_once(const Segment& seg, Slots& slots, std::vector<onednn::Exec>& execs, int team,
                   const std::vector<double>& priority, std::atomic<int>* unread, std::vector<double>& step_ms) const;
  void drop_read(int step, Slots& slots, std::atomic<int>* unread) const;
  // Each step's priority in a parallel run: the longest path from it to the end, in the step times a parallel
  // run at `key` measured (in steps where none has yet).
  std::vector<double> priorities(const Key& key) const;
  void measured(const Key& key, const std::vector<double>& step_ms) const;

  std::vector<Step> steps_;
  int inputs_, slots_;
  std::vector<int> outputs_;
  at::ScalarType dtype_;
  Graph graph_;
  Mode mode_;
  std::vector<double> step_priorities_;  // longest paths in steps
  mutable std::mutex mutex_;
  mutable std::map<Key, Decision> decisions_;
  // Per key: longest paths in measured milliseconds, and how many runs measured them (the first run, which
  // creates one-thread primitives, is replaced by the second; later runs keep the order they give).
  mutable std::map<Key, std::pair<std::vector<double>, int>> measured_priorities_;
};

}  // namespace replay
}  // namespace hrnet_fast

#endif  // HRNET_FAST_WITH_ONEDNN
