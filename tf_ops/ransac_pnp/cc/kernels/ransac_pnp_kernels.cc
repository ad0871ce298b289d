// CPU kernel of RansacPnp over the framework-free core (../../core/ransac_pnp_core.h): every input checked with
// OP_REQUIRES, then the batch split over the op's intra-op thread pool (Shard). Each batch item has its own random
// generator, so the result does not depend on the split.
#define EIGEN_USE_THREADS

#include <atomic>
#include <cmath>
#include <cstdint>
#include <limits>

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
using ::tensorflow::TensorShape;
using ::tensorflow::errors::Internal;
using ::tensorflow::errors::InvalidArgument;

static_assert(sizeof(bool) == sizeof(uint8_t), "TF bool tensors are passed to the core as uint8 arrays");

// Rough cost (cycles) of one batch item for Shard: scoring dominates (num_hypotheses x N points).
constexpr int64_t kCyclesPerScoredPoint = 40;
constexpr int64_t kCyclesPerItemOverhead = 100000;

class RansacPnpOp : public OpKernel {
 public:
  explicit RansacPnpOp(OpKernelConstruction* ctx) : OpKernel(ctx) {
    int64_t seed = 0;
    OP_REQUIRES_OK(ctx, ctx->GetAttr("num_hypotheses", &num_hypotheses_));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("threshold_px", &threshold_px_));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("seed", &seed));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("max_refine_iterations", &max_refine_iterations_));
    seed_ = static_cast<uint64_t>(seed);
    OP_REQUIRES(ctx, num_hypotheses_ >= 1 && num_hypotheses_ <= RP_MAX_HYPOTHESES,
                InvalidArgument("num_hypotheses must be in [1, ", RP_MAX_HYPOTHESES, "], got ", num_hypotheses_));
    OP_REQUIRES(ctx, threshold_px_ > 0.0f && std::isfinite(threshold_px_),
                InvalidArgument("threshold_px must be > 0 and finite, got ", threshold_px_));
    OP_REQUIRES(ctx, max_refine_iterations_ >= 0 && max_refine_iterations_ <= RP_MAX_REFINE_ITERATIONS,
                InvalidArgument("max_refine_iterations must be in [0, ", RP_MAX_REFINE_ITERATIONS, "], got ",
                                max_refine_iterations_));
    OP_REQUIRES(ctx, rp_check_parameters(num_hypotheses_, threshold_px_, max_refine_iterations_) == RP_OK,
                Internal("the core rejected parameters the kernel accepted"));
  }

  void Compute(OpKernelContext* ctx) override {
    const Tensor& pixels = ctx->input(0);
    const Tensor& coords = ctx->input(1);
    const Tensor& K = ctx->input(2);
    const Tensor& weights = ctx->input(3);
    const Tensor& valid = ctx->input(4);
    OP_REQUIRES(ctx, pixels.dims() == 3 && pixels.dim_size(2) == 2,
                InvalidArgument("pixels must be [B, N, 2], got shape ", pixels.shape().DebugString()));
    const int64_t batch = pixels.dim_size(0), n = pixels.dim_size(1);
    OP_REQUIRES(ctx, batch <= std::numeric_limits<int>::max() && n <= std::numeric_limits<int>::max() / 3,
                InvalidArgument("pixels is too large, got shape ", pixels.shape().DebugString()));
    OP_REQUIRES(ctx, coords.dims() == 3 && coords.dim_size(0) == batch && coords.dim_size(1) == n &&
                         coords.dim_size(2) == 3,
                InvalidArgument("coords_mm must be [B, N, 3] = [", batch, ", ", n, ", 3] like pixels, got shape ",
                                coords.shape().DebugString()));
    OP_REQUIRES(ctx, K.dims() == 3 && K.dim_size(0) == batch && K.dim_size(1) == 3 && K.dim_size(2) == 3,
                InvalidArgument("K must be [B, 3, 3] = [", batch, ", 3, 3], got shape ", K.shape().DebugString()));
    OP_REQUIRES(ctx, weights.dims() == 2 && weights.dim_size(0) == batch && weights.dim_size(1) == n,
                InvalidArgument("weights must be [B, N] = [", batch, ", ", n, "], got shape ",
                                weights.shape().DebugString()));
    OP_REQUIRES(ctx, valid.dims() == 2 && valid.dim_size(0) == batch && valid.dim_size(1) == n,
                InvalidArgument("valid must be [B, N] = [", batch, ", ", n, "], got shape ",
                                valid.shape().DebugString()));
    const float* K_data = K.flat<float>().data();
    for (int64_t i = 0; i < K.NumElements(); ++i)
      OP_REQUIRES(ctx, std::isfinite(K_data[i]),
                  InvalidArgument("K must be finite, got ", K_data[i], " in batch item ", i / 9));
    const float* w = weights.flat<float>().data();
    for (int64_t i = 0; i < weights.NumElements(); ++i)
      OP_REQUIRES(ctx, w[i] >= 0.0f && std::isfinite(w[i]),
                  InvalidArgument("weights must be finite and >= 0, got ", w[i], " at [", i / n, ", ", i % n, "]"));

    Tensor *R = nullptr, *t = nullptr, *inliers = nullptr, *score = nullptr, *ok = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, TensorShape({batch, 3, 3}), &R));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(1, TensorShape({batch, 3}), &t));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(2, TensorShape({batch, n}), &inliers));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(3, TensorShape({batch}), &score));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(4, TensorShape({batch}), &ok));
    if (batch == 0) return;

    const float* pixels_data = pixels.flat<float>().data();
    const float* coords_data = coords.flat<float>().data();
    const uint8_t* valid_data = reinterpret_cast<const uint8_t*>(valid.flat<bool>().data());
    float* R_data = R->flat<float>().data();
    float* t_data = t->flat<float>().data();
    uint8_t* inliers_data = reinterpret_cast<uint8_t*>(inliers->flat<bool>().data());
    float* score_data = score->flat<float>().data();
    uint8_t* ok_data = reinterpret_cast<uint8_t*>(ok->flat<bool>().data());
    const int b = static_cast<int>(batch), nn = static_cast<int>(n);

    auto* workers = ctx->device()->tensorflow_cpu_worker_threads();
    const int64_t cost = kCyclesPerScoredPoint * num_hypotheses_ * n + kCyclesPerItemOverhead;
    std::atomic<int> rc{RP_OK};
    tensorflow::Shard(workers->num_threads, workers->workers, batch, cost, [&](int64_t begin, int64_t end) {
      const int r = rp_cpu_ransac_pnp(pixels_data, coords_data, K_data, w, valid_data, b, nn, num_hypotheses_,
                                      threshold_px_, max_refine_iterations_, seed_, R_data, t_data, inliers_data,
                                      score_data, ok_data, /*item_status=*/nullptr, static_cast<int>(begin),
                                      static_cast<int>(end));
      if (r != RP_OK) rc = r;
    });
    OP_REQUIRES(ctx, rc == RP_OK, InvalidArgument("RansacPnp: ", rp_error_string(rc)));
  }

 private:
  int num_hypotheses_ = 64;
  float threshold_px_ = 10.0f;
  int max_refine_iterations_ = 10;
  uint64_t seed_ = 0;
};

REGISTER_KERNEL_BUILDER(Name("RansacPnp").Device(DEVICE_CPU), RansacPnpOp);

}  // namespace synthpose
