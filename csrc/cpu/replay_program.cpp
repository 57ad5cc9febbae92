// The replayed program's two schedules and the automatic choice between them (replay_program.h).
#ifdef HRNET_FAST_WITH_ONEDNN

#include "cpu/replay_program.h"

#include "ops.h"

#include <ATen/Parallel.h>
#include <ATen/ThreadLocalState.h>
#include <ATen/record_function.h>
#include <omp.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <exception>
#include <memory>
#include <thread>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif

namespace hrnet_fast {
namespace replay {

namespace {

// The longest path from each step to the end, each step counting `cost[step]`: edges go to later steps only.
std::vector<double> longest_paths(const Graph& g, const std::vector<double>& cost) {
  std::vector<double> path(cost.size());
  for (size_t i = cost.size(); i-- > 0;) {
    double tail = 0;
    for (int j : g.successors[i]) tail = std::max(tail, path[j]);
    path[i] = cost[i] + tail;
  }
  return path;
}

// A thread with nothing ready waits for a step to finish: ~0.1 us a look while a step is about to end, letting
// other threads of the machine run once it has looked long.
void wait_a_little(int& looks) {
  if (++looks < 4096) {
#if defined(__x86_64__) || defined(__i386__)
    _mm_pause();
#endif
  } else {
    std::this_thread::yield();
  }
}

}  // namespace

std::optional<Graph> graph_of(const std::vector<Step>& steps, int inputs, int slots, const std::vector<int>& outputs,
                              std::string& why) {
  Graph g;
  const int n = static_cast<int>(steps.size());
  g.successors.resize(n);
  std::vector<std::vector<int>> predecessors(n);
  g.reads.resize(n);
  g.readers.assign(slots, 0);
  g.kept.assign(slots, 0);
  std::vector<int> writer(slots, -1);
  std::vector<std::vector<int>> read_by(slots);
  for (int o : outputs) {
    if (o < 0 || o >= slots) return why = "an output slot is out of range", std::nullopt;
    g.kept[o] = 1;
  }
  for (int i = 0; i < n; ++i) {
    const Step& s = steps[i];
    std::vector<int> preds;
    for (size_t k = 0; k < s.reads.size(); ++k) {
      const int r = s.reads[k];
      if (r == -1 && s.kind == Step::Kind::kConv && k == 1) continue;  // no residual
      if (r >= inputs && writer[r] < 0) return why = "a step reads a slot no earlier step writes", std::nullopt;
      if (std::find(g.reads[i].begin(), g.reads[i].end(), r) != g.reads[i].end()) continue;
      g.reads[i].push_back(r);
      ++g.readers[r];
      read_by[r].push_back(i);
      if (r >= inputs) preds.push_back(writer[r]);
    }
    if (s.out < inputs || writer[s.out] >= 0) return why = "a slot is written twice or over an input", std::nullopt;
    writer[s.out] = i;
    if (s.kind == Step::Kind::kConv && s.residual_is_free) {
      const int r = s.reads[1];
      if (r < inputs || g.kept[r]) return why = "a residual summed in place is an input or an output", std::nullopt;
      if (r == s.reads[0]) return why = "a residual summed in place is the conv's own input", std::nullopt;
      for (int other : read_by[r]) {
        if (other != i) preds.push_back(other);  // they read it before it is overwritten
      }
    }
    std::sort(preds.begin(), preds.end());
    preds.erase(std::unique(preds.begin(), preds.end()), preds.end());
    for (int p : preds) g.successors[p].push_back(i);
    predecessors[i] = std::move(preds);
  }
  for (int i = 0; i < n; ++i) {
    const Step& s = steps[i];
    if (s.kind == Step::Kind::kConv && s.residual_is_free && read_by[s.reads[1]].back() != i) {
      return why = "a residual summed in place is read by a later step", std::nullopt;
    }
  }
  // Chain steps: every earlier step is an ancestor and every later one a descendant (ancestor sets as bits).
  const size_t words = (static_cast<size_t>(n) + 63) / 64;
  std::vector<uint64_t> ancestors(static_cast<size_t>(n) * words, 0);
  std::vector<int> descendants(n, 0);
  std::vector<char> chain(n, 0);
  for (int i = 0; i < n; ++i) {
    uint64_t* mine = &ancestors[i * words];
    for (int p : predecessors[i]) {
      const uint64_t* theirs = &ancestors[p * words];
      for (size_t w = 0; w < words; ++w) mine[w] |= theirs[w];
      mine[p / 64] |= uint64_t{1} << (p % 64);
    }
    int count = 0;
    for (size_t w = 0; w < words; ++w) {
      for (uint64_t bits = mine[w]; bits != 0; bits &= bits - 1) {
        ++descendants[w * 64 + __builtin_ctzll(bits)];
        ++count;
      }
    }
    chain[i] = count == i;  // the descendants half is checked below, once every step is counted
  }
  g.segment_of.assign(n, 0);
  g.waits_in_segment.assign(n, 0);
  for (int i = 0; i < n; ++i) {
    const bool at_once = !(chain[i] && descendants[i] == n - 1 - i);
    if (g.segments.empty() || g.segments.back().at_once != at_once) g.segments.push_back({at_once, i, i});
    g.segments.back().end = i + 1;
    g.segment_of[i] = static_cast<int>(g.segments.size()) - 1;
    for (int p : predecessors[i]) g.waits_in_segment[i] += g.segment_of[p] == g.segment_of[i];
  }
  for (Segment& seg : g.segments) {
    std::vector<int> depth(seg.end - seg.begin, 0), on_depth(seg.end - seg.begin, 0);
    for (int i = seg.begin; i < seg.end; ++i) {
      for (int j : g.successors[i]) {
        if (j < seg.end) depth[j - seg.begin] = std::max(depth[j - seg.begin], depth[i - seg.begin] + 1);
      }
      seg.width = std::max(seg.width, ++on_depth[depth[i - seg.begin]]);
    }
  }
  return g;
}

Program::Program(std::vector<Step> steps, int inputs, int slots, std::vector<int> outputs, at::ScalarType dtype,
                 Graph graph, Mode mode)
    : steps_(std::move(steps)), inputs_(inputs), slots_(slots), outputs_(std::move(outputs)), dtype_(dtype),
      graph_(std::move(graph)), mode_(mode),
      step_priorities_(longest_paths(graph_, std::vector<double>(steps_.size(), 1.0))) {}

std::map<Program::Key, Program::Decision> Program::decisions() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return decisions_;
}

bool Program::weights_current() const {
  for (const Step& s : steps_) {
    if (s.kind == Step::Kind::kConv &&
        (s.weight.const_data_ptr() != s.weight_ptr || version_of(s.weight) != s.weight_version)) {
      return false;
    }
  }
  return true;
}

std::optional<Slots> Program::run(const Slots& inputs) const {
  at::internal::lazy_init_num_threads();
  const int threads = omp_in_parallel() ? 1 : at::get_num_threads();
  if (mode_ == Mode::kSerial || threads < 2 || !splits()) return outputs_of(run_serial(inputs));
  const Key key{inputs[0].size(0), inputs[0].size(2), inputs[0].size(3), threads};
  if (mode_ == Mode::kParallel) return outputs_of(run_parallel(inputs, threads, key));
  std::optional<bool> parallel;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    auto found = decisions_.find(key);
    if (found != decisions_.end()) parallel = found->second.parallel;
  }
  if (!parallel) return outputs_of(decide(inputs, threads, key));
  return outputs_of(*parallel ? run_parallel(inputs, threads, key) : run_serial(inputs));
}

// Times both schedules, interleaved (a first parallel run creates its one-thread primitives and measures the steps
// untimed), keeps the faster of three runs each, and returns that schedule's slots. Parallel must win by 3 %:
// within noise, the serial schedule stays.
std::optional<Slots> Program::decide(const Slots& inputs, int threads, const Key& key) const {
  if (!run_parallel(inputs, threads, key)) return std::nullopt;
  using Clock = std::chrono::steady_clock;
  Decision d{false, 1e300, 1e300};
  std::optional<Slots> serial, parallel;
  for (int i = 0; i < 3; ++i) {
    auto t0 = Clock::now();
    serial = run_serial(inputs);
    auto t1 = Clock::now();
    parallel = run_parallel(inputs, threads, key);
    auto t2 = Clock::now();
    if (!serial || !parallel) return std::nullopt;
    d.serial_ms = std::min(d.serial_ms, std::chrono::duration<double, std::milli>(t1 - t0).count());
    d.parallel_ms = std::min(d.parallel_ms, std::chrono::duration<double, std::milli>(t2 - t1).count());
  }
  d.parallel = d.parallel_ms < 0.97 * d.serial_ms;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    decisions_.emplace(key, d);
  }
  return d.parallel ? parallel : serial;
}

std::optional<Slots> Program::outputs_of(std::optional<Slots> slots) const {
  if (!slots) return std::nullopt;
  Slots out;
  out.reserve(outputs_.size());
  for (int o : outputs_) out.push_back((*slots)[o]);
  return out;
}

// One step on `slots`; false where it does not take its input as given.
bool Program::run_step(const Step& s, Slots& slots, onednn::Exec& exec) const {
  if (s.kind == Step::Kind::kConv) {
    const at::Tensor& x = slots[s.reads[0]];
    std::optional<at::Tensor> residual;
    if (s.reads[1] >= 0) residual = slots[s.reads[1]];
    if (!s.conv->takes(x, s.bias, residual)) return false;
    RECORD_FUNCTION("hrnet_fast_C::onednn_conv", std::vector<c10::IValue>());  // as onednn_conv_run names it
    std::optional<at::Tensor> y = s.conv->run(x, s.bias, residual, s.relu, s.residual_is_free, exec);
    if (!y) return false;
    residual.reset();  // the step's own reference, so that a released residual is freed here
    slots[s.out] = std::move(*y);
  } else {
    std::vector<at::Tensor> low, same;
    for (size_t i = 1; i < s.reads.size(); ++i) (i <= s.low ? low : same).push_back(slots[s.reads[i]]);
    FuseArgs fuse = prepare_fuse(slots[s.reads[0]], low, same, /*relu=*/true, s.mode, s.align_corners,
                                 c10::DeviceType::CPU);
    if (fuse.out.numel() > 0) {
      RECORD_FUNCTION("hrnet_fast_C::multires_fuse", std::vector<c10::IValue>());  // as module.cpp names it
      multires_fuse_cpu(fuse);
    }
    slots[s.out] = std::move(fuse.out);
  }
  return true;
}

std::optional<Slots> Program::run_serial(Slots slots) const {
  slots.resize(slots_);
  onednn::Exec exec;
  for (const Step& s : steps_) {
    if (!run_step(s, slots, exec)) return std::nullopt;
    for (int r : s.release) slots[r].reset();
  }
  return slots;
}

std::vector<double> Program::priorities(const Key& key) const {
  std::lock_guard<std::mutex> lock(mutex_);
  auto found = measured_priorities_.find(key);
  return found == measured_priorities_.end() ? step_priorities_ : found->second.first;
}

void Program::measured(const Key& key, const std::vector<double>& step_ms) const {
  std::lock_guard<std::mutex> lock(mutex_);
  auto& [paths, runs] = measured_priorities_[key];
  if (runs >= 2) return;
  paths = longest_paths(graph_, step_ms);
  ++runs;
}

void Program::drop_read(int step, Slots& slots, std::atomic<int>* unread) const {
  for (int r : graph_.reads[step]) {
    if (unread[r].fetch_sub(1, std::memory_order_acq_rel) == 1 && !graph_.kept[r]) slots[r].reset();
  }
}

// Segment by segment: a chain's steps one after another, each with every thread; steps that can run at once on a
// team of OpenMP threads (see run_at_once). A slot is dropped when its last reader is done.
std::optional<Slots> Program::run_parallel(Slots slots, int threads, const Key& key) const {
  slots.resize(slots_);
  const int n = static_cast<int>(steps_.size());
  const std::vector<double> priority = priorities(key);
  std::unique_ptr<std::atomic<int>[]> unread(new std::atomic<int>[slots_]);
  for (int s = 0; s < slots_; ++s) unread[s].store(graph_.readers[s], std::memory_order_relaxed);
  std::vector<double> step_ms(n, 0.0);
  int team = 1;  // the largest team a segment runs on
  for (const Segment& seg : graph_.segments) team = std::max(team, seg.at_once ? std::min(threads, seg.width) : 1);
  std::vector<onednn::Exec> execs(team);
  for (const Segment& seg : graph_.segments) {
    if (seg.at_once) {
      const int team = std::min(threads, seg.width);
      if (!run_at_once(seg, slots, execs, team, priority, unread.get(), step_ms)) return std::nullopt;
      continue;
    }
    for (int i = seg.begin; i < seg.end; ++i) {
      const auto start = std::chrono::steady_clock::now();
      if (!run_step(steps_[i], slots, execs[0])) return std::nullopt;
      step_ms[i] = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
      drop_read(i, slots, unread.get());
    }
  }
  measured(key, step_ms);
  return slots;
}

// The segment's steps on a team of OpenMP threads (the runtime torch's ops use): each thread takes the ready step
// with the longest path to the end, runs it, and makes ready the steps waiting only for it. Inside the team oneDNN
// and at::parallel_for run on the calling thread. Each thread has its own oneDNN stream and scratchpad, and the
// caller's thread-local state (grad and inference mode, the profiler), so what a step creates is what the serial
// run creates.
bool Program::run_at_once(const Segment& seg, Slots& slots, std::vector<onednn::Exec>& execs, int team,
                          const std::vector<double>& priority, std::atomic<int>* unread,
                          std::vector<double>& step_ms) const {
  const int count = seg.end - seg.begin;
  std::unique_ptr<std::atomic<int>[]> waiting(new std::atomic<int>[count]);
  std::vector<int> ready;
  for (int i = seg.begin; i < seg.end; ++i) {
    waiting[i - seg.begin].store(graph_.waits_in_segment[i], std::memory_order_relaxed);
    if (graph_.waits_in_segment[i] == 0) ready.push_back(i);
  }
  std::mutex ready_mutex, error_mutex;
  std::atomic<int> done{0};
  std::atomic<bool> failed{false};
  std::exception_ptr error;
  const at::ThreadLocalState state;
#pragma omp parallel num_threads(team)
  {
    try {
      at::ThreadLocalStateGuard guard(state);
      onednn::Exec& exec = execs[omp_get_thread_num()];
      int looks = 0;
      while (!failed.load(std::memory_order_acquire) && done.load(std::memory_order_acquire) < count) {
        int i = -1;
        {
          std::lock_guard<std::mutex> lock(ready_mutex);
          auto best = std::max_element(ready.begin(), ready.end(), [&](int a, int b) {
            return priority[a] < priority[b] || (priority[a] == priority[b] && a > b);
          });
          if (best != ready.end()) {
            i = *best;
            *best = ready.back();
            ready.pop_back();
          }
        }
        if (i < 0) {
          wait_a_little(looks);
          continue;
        }
        looks = 0;
        const auto start = std::chrono::steady_clock::now();
        if (!run_step(steps_[i], slots, exec)) {
          failed = true;
          break;
        }
        step_ms[i] = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
        drop_read(i, slots, unread);
        {
          std::lock_guard<std::mutex> lock(ready_mutex);
          for (int j : graph_.successors[i]) {
            if (graph_.segment_of[j] == graph_.segment_of[i] &&
                waiting[j - seg.begin].fetch_sub(1, std::memory_order_acq_rel) == 1) {
              ready.push_back(j);
            }
          }
        }
        done.fetch_add(1, std::memory_order_release);
      }
    } catch (...) {  // no exception may leave an OpenMP region: rethrown on the calling thread below
      std::lock_guard<std::mutex> lock(error_mutex);
      if (!error) error = std::current_exception();
      failed = true;
    }
  }
  if (error) std::rethrow_exception(error);
  return !failed;
}
}  // namespace replay
}  // namespace hrnet_fast

#endif  // HRNET_FAST_WITH_ONEDNN
