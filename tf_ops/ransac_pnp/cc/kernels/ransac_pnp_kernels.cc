// CPU kernels of RansacPnp, RansacPnpHypotheses and RansacPnpHypothesesGrad over the framework-free core
// (../../core/ransac_pnp_core.h): every input checked with OP_REQUIRES, then the batch split over the op's intra-op
// thread pool (Shard). Each batch item has its own random generator, so the result does not depend on the split.
#define EIGEN_USE_THREADS

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/tensor.h"
#include "tensorflow/core/framework/tensor_shape.h"
#include "tensorflow/core/util/work_sharder.h"
#include "tf_ops/ransac_pnp/core/ransac_pnp_core.h"

namespace synthpose {

using ::tensorflow::DEVICE_CPU;
using ::tensorflow::OpKernel;
using ::tensorflow::OpKernelConstruction;
using ::tensorflow::OpKernelContext;
using ::tensorflow::Tensor;
using ::tensorflow::Status;
using ::tensorflow::TensorShape;
using ::tensorflow::errors::Internal;
using ::tensorflow::errors::InvalidArgument;

static_assert(sizeof(bool) == sizeof(uint8_t), "TF bool tensors are passed to the core as uint8 arrays");

// Rough cost (cycles) of one batch item for Shard: scoring dominates the inference kernel (num_hypotheses x N
// points); refining every hypothesis the training form; scoring and the implicit derivative the backward.
constexpr int64_t kCyclesPerScoredPoint = 40;
constexpr int64_t kCyclesPerRefinedPoint = 400;
constexpr int64_t kCyclesPerDifferentiatedPoint = 200;
constexpr int64_t kCyclesPerItemOverhead = 100000;

// Attributes shared by the three kernels (seed only for the forward ones), checked as the core checks them.
struct Params {
  int num_hypotheses = 64;
  float threshold_px = 10.0f;
  int max_refine_iterations = 10;
  int max_refine_points = 0;  // the training form and its gradient only (0: refine on every inlier)
  uint64_t seed = 0;
};

void ReadParams(OpKernelConstruction* ctx, bool with_seed, Params* p, bool with_refine_points = false) {
  OP_REQUIRES_OK(ctx, ctx->GetAttr("num_hypotheses", &p->num_hypotheses));
  OP_REQUIRES_OK(ctx, ctx->GetAttr("threshold_px", &p->threshold_px));
  OP_REQUIRES_OK(ctx, ctx->GetAttr("max_refine_iterations", &p->max_refine_iterations));
  if (with_seed) {
    int64_t seed = 0;
    OP_REQUIRES_OK(ctx, ctx->GetAttr("seed", &seed));
    p->seed = static_cast<uint64_t>(seed);
  }
  OP_REQUIRES(ctx, p->num_hypotheses >= 1 && p->num_hypotheses <= RP_MAX_HYPOTHESES,
              InvalidArgument("num_hypotheses must be in [1, ", RP_MAX_HYPOTHESES, "], got ", p->num_hypotheses));
  OP_REQUIRES(ctx, p->threshold_px > 0.0f && std::isfinite(p->threshold_px),
              InvalidArgument("threshold_px must be > 0 and finite, got ", p->threshold_px));
  OP_REQUIRES(ctx, p->max_refine_iterations >= 0 && p->max_refine_iterations <= RP_MAX_REFINE_ITERATIONS,
              InvalidArgument("max_refine_iterations must be in [0, ", RP_MAX_REFINE_ITERATIONS, "], got ",
                              p->max_refine_iterations));
  if (with_refine_points) {
    OP_REQUIRES_OK(ctx, ctx->GetAttr("max_refine_points", &p->max_refine_points));
    OP_REQUIRES(ctx, p->max_refine_points >= 0,
                InvalidArgument("max_refine_points must be >= 0 (0: every inlier), got ", p->max_refine_points));
  }
  OP_REQUIRES(ctx, rp_check_parameters(p->num_hypotheses, p->threshold_px, p->max_refine_iterations) == RP_OK,
              Internal("the core rejected parameters the kernel accepted"));
}

// Shapes of pixels, coords_mm, K, weights (NULL: the backward has none) and valid, and finite K / weights; sets
// *batch and *n.
Status CheckInputs(const Tensor& pixels, const Tensor& coords, const Tensor& K, const Tensor* weights,
                   const Tensor& valid, int64_t* batch, int64_t* n) {
  if (!(pixels.dims() == 3 && pixels.dim_size(2) == 2))
    return InvalidArgument("pixels must be [B, N, 2], got shape ", pixels.shape().DebugString());
  *batch = pixels.dim_size(0);
  *n = pixels.dim_size(1);
  if (!(*batch <= std::numeric_limits<int>::max() && *n <= std::numeric_limits<int>::max() / 3))
    return InvalidArgument("pixels is too large, got shape ", pixels.shape().DebugString());
  if (!(coords.dims() == 3 && coords.dim_size(0) == *batch && coords.dim_size(1) == *n && coords.dim_size(2) == 3))
    return InvalidArgument("coords_mm must be [B, N, 3] = [", *batch, ", ", *n, ", 3] like pixels, got shape ",
                           coords.shape().DebugString());
  if (!(K.dims() == 3 && K.dim_size(0) == *batch && K.dim_size(1) == 3 && K.dim_size(2) == 3))
    return InvalidArgument("K must be [B, 3, 3] = [", *batch, ", 3, 3], got shape ", K.shape().DebugString());
  if (weights && !(weights->dims() == 2 && weights->dim_size(0) == *batch && weights->dim_size(1) == *n))
    return InvalidArgument("weights must be [B, N] = [", *batch, ", ", *n, "], got shape ",
                           weights->shape().DebugString());
  if (!(valid.dims() == 2 && valid.dim_size(0) == *batch && valid.dim_size(1) == *n))
    return InvalidArgument("valid must be [B, N] = [", *batch, ", ", *n, "], got shape ",
                           valid.shape().DebugString());
  const float* K_data = K.flat<float>().data();
  for (int64_t i = 0; i < K.NumElements(); ++i)
    if (!std::isfinite(K_data[i]))
      return InvalidArgument("K must be finite, got ", K_data[i], " in batch item ", i / 9);
  if (weights) {
    const float* w = weights->flat<float>().data();
    for (int64_t i = 0; i < weights->NumElements(); ++i)
      if (!(w[i] >= 0.0f && std::isfinite(w[i])))
        return InvalidArgument("weights must be finite and >= 0, got ", w[i], " at [", i / *n, ", ", i % *n, "]");
  }
  return Status();
}

const uint8_t* Bytes(const Tensor& t) { return reinterpret_cast<const uint8_t*>(t.flat<bool>().data()); }
uint8_t* Bytes(Tensor* t) { return reinterpret_cast<uint8_t*>(t->flat<bool>().data()); }

class RansacPnpOp : public OpKernel {
 public:
  explicit RansacPnpOp(OpKernelConstruction* ctx) : OpKernel(ctx) { ReadParams(ctx, /*with_seed=*/true, &p_); }

  void Compute(OpKernelContext* ctx) override {
    const Tensor& pixels = ctx->input(0);
    const Tensor& coords = ctx->input(1);
    const Tensor& K = ctx->input(2);
    const Tensor& weights = ctx->input(3);
    const Tensor& valid = ctx->input(4);
    int64_t batch = 0, n = 0;
    OP_REQUIRES_OK(ctx, CheckInputs(pixels, coords, K, &weights, valid, &batch, &n));

    Tensor *R = nullptr, *t = nullptr, *inliers = nullptr, *score = nullptr, *ok = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, TensorShape({batch, 3, 3}), &R));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(1, TensorShape({batch, 3}), &t));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(2, TensorShape({batch, n}), &inliers));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(3, TensorShape({batch}), &score));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(4, TensorShape({batch}), &ok));
    if (batch == 0) return;

    const float* pixels_data = pixels.flat<float>().data();
    const float* coords_data = coords.flat<float>().data();
    const float* K_data = K.flat<float>().data();
    const float* w = weights.flat<float>().data();
    const uint8_t* valid_data = Bytes(valid);
    float* R_data = R->flat<float>().data();
    float* t_data = t->flat<float>().data();
    uint8_t* inliers_data = Bytes(inliers);
    float* score_data = score->flat<float>().data();
    uint8_t* ok_data = Bytes(ok);
    const int b = static_cast<int>(batch), nn = static_cast<int>(n);

    auto* workers = ctx->device()->tensorflow_cpu_worker_threads();
    const int64_t cost = kCyclesPerScoredPoint * p_.num_hypotheses * n + kCyclesPerItemOverhead;
    std::atomic<int> rc{RP_OK};
    tensorflow::Shard(workers->num_threads, workers->workers, batch, cost, [&](int64_t begin, int64_t end) {
      const int r = rp_cpu_ransac_pnp(pixels_data, coords_data, K_data, w, valid_data, b, nn, p_.num_hypotheses,
                                      p_.threshold_px, p_.max_refine_iterations, p_.seed, R_data, t_data, inliers_data,
                                      score_data, ok_data, /*item_status=*/nullptr, static_cast<int>(begin),
                                      static_cast<int>(end));
      if (r != RP_OK) rc = r;
    });
    OP_REQUIRES(ctx, rc == RP_OK, InvalidArgument("RansacPnp: ", rp_error_string(rc)));
  }

 private:
  Params p_;
};

REGISTER_KERNEL_BUILDER(Name("RansacPnp").Device(DEVICE_CPU), RansacPnpOp);

// Training form: every hypothesis, refined. Refinement of all H hypotheses dominates (a few LM rounds over the
// inliers of each), hence the larger per-point cost than the inference kernel's.
class RansacPnpHypothesesOp : public OpKernel {
 public:
  explicit RansacPnpHypothesesOp(OpKernelConstruction* ctx) : OpKernel(ctx) {
    ReadParams(ctx, /*with_seed=*/true, &p_, /*with_refine_points=*/true);
  }

  void Compute(OpKernelContext* ctx) override {
    const Tensor& pixels = ctx->input(0);
    const Tensor& coords = ctx->input(1);
    const Tensor& K = ctx->input(2);
    const Tensor& weights = ctx->input(3);
    const Tensor& valid = ctx->input(4);
    int64_t batch = 0, n = 0;
    OP_REQUIRES_OK(ctx, CheckInputs(pixels, coords, K, &weights, valid, &batch, &n));
    const int64_t h = p_.num_hypotheses;
    Tensor *R = nullptr, *t = nullptr, *score = nullptr, *sets = nullptr, *ok = nullptr, *R_init = nullptr,
           *t_init = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, TensorShape({batch, h, 3, 3}), &R));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(1, TensorShape({batch, h, 3}), &t));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(2, TensorShape({batch, h}), &score));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(3, TensorShape({batch, h, RP_MINIMAL_SET_SIZE}), &sets));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(4, TensorShape({batch, h}), &ok));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(5, TensorShape({batch, h, 3, 3}), &R_init));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(6, TensorShape({batch, h, 3}), &t_init));
    if (batch == 0) return;

    const float* pixels_data = pixels.flat<float>().data();
    const float* coords_data = coords.flat<float>().data();
    const float* K_data = K.flat<float>().data();
    const float* w = weights.flat<float>().data();
    const uint8_t* valid_data = Bytes(valid);
    float* R_data = R->flat<float>().data();
    float* t_data = t->flat<float>().data();
    float* score_data = score->flat<float>().data();
    int32_t* sets_data = sets->flat<int32_t>().data();
    uint8_t* ok_data = Bytes(ok);
    float* R_init_data = R_init->flat<float>().data();
    float* t_init_data = t_init->flat<float>().data();
    const int b = static_cast<int>(batch), nn = static_cast<int>(n);

    auto* workers = ctx->device()->tensorflow_cpu_worker_threads();
    const int64_t refined = p_.max_refine_points > 0 ? std::min<int64_t>(n, p_.max_refine_points) : n;
    const int64_t cost = kCyclesPerScoredPoint * h * n + kCyclesPerRefinedPoint * h * refined + kCyclesPerItemOverhead;
    std::atomic<int> rc{RP_OK};
    tensorflow::Shard(workers->num_threads, workers->workers, batch, cost, [&](int64_t begin, int64_t end) {
      const int r = rp_cpu_ransac_pnp_hypotheses(
          pixels_data, coords_data, K_data, w, valid_data, b, nn, p_.num_hypotheses, p_.threshold_px,
          p_.max_refine_iterations, p_.max_refine_points, p_.seed, R_data, t_data, score_data, sets_data, ok_data, R_init_data, t_init_data,
          /*item_status=*/nullptr, static_cast<int>(begin), static_cast<int>(end));
      if (r != RP_OK) rc = r;
    });
    OP_REQUIRES(ctx, rc == RP_OK, InvalidArgument("RansacPnpHypotheses: ", rp_error_string(rc)));
  }

 private:
  Params p_;
};

REGISTER_KERNEL_BUILDER(Name("RansacPnpHypotheses").Device(DEVICE_CPU), RansacPnpHypothesesOp);

// Backward of the training form: d L / d coords_mm.
class RansacPnpHypothesesGradOp : public OpKernel {
 public:
  explicit RansacPnpHypothesesGradOp(OpKernelConstruction* ctx) : OpKernel(ctx) {
    ReadParams(ctx, /*with_seed=*/false, &p_, /*with_refine_points=*/true);
  }

  void Compute(OpKernelContext* ctx) override {
    const Tensor& pixels = ctx->input(0);
    const Tensor& coords = ctx->input(1);
    const Tensor& K = ctx->input(2);
    const Tensor& valid = ctx->input(3);
    int64_t batch = 0, n = 0;
    OP_REQUIRES_OK(ctx, CheckInputs(pixels, coords, K, /*weights=*/nullptr, valid, &batch, &n));
    const int64_t h = p_.num_hypotheses;
    // Inputs 4.. : the forward's outputs and the upstream gradients, [B, H, ...].
    struct Per {
      const char* name;
      std::vector<int64_t> tail;
    };
    const Per per[] = {{"rotation", {3, 3}},      {"translation_mm", {3}},     {"rotation_init", {3, 3}},
                       {"translation_init_mm", {3}}, {"minimal_sets", {RP_MINIMAL_SET_SIZE}}, {"ok", {}},
                       {"grad_rotation", {3, 3}}, {"grad_translation_mm", {3}}, {"grad_score", {}},
                       {"grad_rotation_init", {3, 3}}, {"grad_translation_init_mm", {3}}};
    for (int k = 0; k < 11; ++k) {
      std::vector<int64_t> dims = {batch, h};
      dims.insert(dims.end(), per[k].tail.begin(), per[k].tail.end());
      const TensorShape want(dims);
      const Tensor& in = ctx->input(4 + k);
      OP_REQUIRES(ctx, in.shape() == want,
                  InvalidArgument(per[k].name, " must have shape ", want.DebugString(), ", got shape ",
                                  in.shape().DebugString()));
    }
    Tensor* grad = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, TensorShape({batch, n, 3}), &grad));
    if (batch == 0) return;
    const auto f = [&](int k) { return ctx->input(k).flat<float>().data(); };
    const float* pixels_data = f(0);
    const float* coords_data = f(1);
    const float* K_data = f(2);
    const uint8_t* valid_data = Bytes(valid);
    const int32_t* sets_data = ctx->input(8).flat<int32_t>().data();
    const uint8_t* ok_data = Bytes(ctx->input(9));
    float* grad_data = grad->flat<float>().data();
    const int b = static_cast<int>(batch), nn = static_cast<int>(n);

    auto* workers = ctx->device()->tensorflow_cpu_worker_threads();
    const int64_t cost = kCyclesPerDifferentiatedPoint * h * n + kCyclesPerItemOverhead;
    std::atomic<int> rc{RP_OK};
    tensorflow::Shard(workers->num_threads, workers->workers, batch, cost, [&](int64_t begin, int64_t end) {
      const int r = rp_cpu_ransac_pnp_hypotheses_backward(
          pixels_data, coords_data, K_data, valid_data, b, nn, p_.num_hypotheses, p_.threshold_px,
          p_.max_refine_iterations, p_.max_refine_points, f(4), f(5), f(6), f(7), sets_data, ok_data, f(10), f(11), f(12), f(13), f(14),
          grad_data, static_cast<int>(begin), static_cast<int>(end));
      if (r != RP_OK) rc = r;
    });
    OP_REQUIRES(ctx, rc == RP_OK,
                InvalidArgument("RansacPnpHypothesesGrad: ", rp_error_string(rc),
                                " (minimal_sets must hold 4 distinct indices in [0, N) where ok is true)"));
  }

 private:
  Params p_;
};

REGISTER_KERNEL_BUILDER(Name("RansacPnpHypothesesGrad").Device(DEVICE_CPU), RansacPnpHypothesesGradOp);

}  // namespace synthpose
