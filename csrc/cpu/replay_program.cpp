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
#include <exception>

namespace hrnet_fast {
namespace replay {

bool Program::splits() const {
  for (const Phase& p : phases_) {
    if (p.lanes.size() > 1) return true;
  }
  return false;
}

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
  if (mode_ == Mode::kParallel) return outputs_of(run_parallel(inputs, threads));
  const Key key{inputs[0].size(0), inputs[0].size(2), inputs[0].size(3), threads};
  {
    std::lock_guard<std::mutex> lock(mutex_);
    auto found = decisions_.find(key);
    if (found != decisions_.end()) {
      return outputs_of(found->second.parallel ? run_parallel(inputs, threads) : run_serial(inputs));
    }
  }
  return outputs_of(decide(inputs, threads, key));
}

// Times both schedules, interleaved (a first parallel run creates its single-thread primitives untimed), keeps
// the faster, and returns that run's slots. Parallel must win by 3 %: within noise, the serial schedule stays.
std::optional<Slots> Program::decide(const Slots& inputs, int threads, const Key& key) const {
  if (!run_parallel(inputs, threads)) return std::nullopt;
  using Clock = std::chrono::steady_clock;
  Decision d{false, 1e300, 1e300};
  std::optional<Slots> serial, parallel;
  for (int i = 0; i < 2; ++i) {
    auto t0 = Clock::now();
    serial = run_serial(inputs);
    auto t1 = Clock::now();
    parallel = run_parallel(inputs, threads);
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
bool Program::run_step(const Step& s, Slots& slots, onednn::Exec& exec, bool parallel) const {
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
  for (int r : parallel ? s.release_parallel : s.release) slots[r].reset();
  return true;
}

std::optional<Slots> Program::run_serial(Slots slots) const {
  slots.resize(slots_);
  onednn::Exec exec;
  for (const Step& s : steps_) {
    if (!run_step(s, slots, exec, false)) return std::nullopt;
  }
  return slots;
}

// Each phase's lanes on a team of min(lanes, threads) OpenMP threads (the runtime torch's ops use), taken in
// turn by whichever thread is free; inside the team oneDNN and at::parallel_for run on the calling thread.
// Each thread has its own oneDNN stream and scratchpad, and the caller's thread-local state (grad and
// inference mode, the profiler), so what a lane creates is what the serial run creates.
std::optional<Slots> Program::run_parallel(Slots slots, int threads) const {
  slots.resize(slots_);
  std::vector<onednn::Exec> execs(threads);
  const at::ThreadLocalState state;
  for (const Phase& phase : phases_) {
    const int lanes = static_cast<int>(phase.lanes.size());
    if (lanes == 1) {
      for (int i : phase.lanes[0]) {
        if (!run_step(steps_[i], slots, execs[0], true)) return std::nullopt;
      }
    } else {
      std::atomic<bool> failed{false};
      std::exception_ptr error;
      std::mutex error_mutex;
#pragma omp parallel for num_threads(std::min(lanes, threads)) schedule(dynamic, 1)
      for (int lane = 0; lane < lanes; ++lane) {
        if (failed.load()) continue;
        try {
          at::ThreadLocalStateGuard guard(state);
          for (int i : phase.lanes[lane]) {
            if (!run_step(steps_[i], slots, execs[omp_get_thread_num()], true)) {
              failed = true;
              break;
            }
          }
        } catch (...) {  // no exception may leave an OpenMP region: rethrown on the calling thread below
          std::lock_guard<std::mutex> lock(error_mutex);
          if (!error) error = std::current_exception();
          failed = true;
        }
      }
      if (error) std::rethrow_exception(error);
      if (failed) return std::nullopt;
    }
    for (int r : phase.release) slots[r].reset();
  }
  return slots;
}
}  // namespace replay
}  // namespace hrnet_fast

#endif  // HRNET_FAST_WITH_ONEDNN
