// Kernels of ProjectionIouLoss / ProjectionIouLossGrad: a device-templated functor over the framework-free core
// (../../core/projection_loss_core.h). CPU: the batch is split over the op's intra-op thread pool (Shard). GPU
// (compiled only with GOOGLE_CUDA): the CUDA core on the op's stream, workspace from the TF allocator.
#define EIGEN_USE_THREADS
#if GOOGLE_CUDA
#define EIGEN_USE_GPU
#endif

#include <cmath>
#include <cstdint>
#include <limits>

#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/tensor.h"
#include "tensorflow/core/framework/tensor_shape.h"
#include "tensorflow/core/util/work_sharder.h"
#include "tf_ops/projection_loss/core/projection_loss_core.h"
#include "unsupported/Eigen/CXX11/Tensor"

namespace synthpose {

using ::tensorflow::DEVICE_CPU;
using ::tensorflow::OpKernel;
using ::tensorflow::OpKernelConstruction;
using ::tensorflow::OpKernelContext;
using ::tensorflow::Status;
using ::tensorflow::Tensor;
using ::tensorflow::TensorShape;
using ::tensorflow::errors::Internal;
using ::tensorflow::errors::InvalidArgument;

typedef Eigen::ThreadPoolDevice CPUDevice;
#if GOOGLE_CUDA
typedef Eigen::GpuDevice GPUDevice;
#endif

struct LossParams {
  int batch = 0, n = 0, m = 0, height = 0, width = 0;
  float scale = 1.0f;
};

inline Status CoreStatus(int rc, const char* what) {
  if (rc == PL_OK) return Status();
  if (rc == PL_ERR_INVALID_ARGUMENT || rc == PL_ERR_IMAGE_TOO_LARGE)
    return InvalidArgument(what, ": ", pl_error_string(rc));
  return Internal(what, ": ", pl_error_string(rc));
}

template <typename Device>
struct ProjectionIouLossFunctor;

template <>
struct ProjectionIouLossFunctor<CPUDevice> {
  static int64_t Cost(const LossParams& p) { return 40 * (static_cast<int64_t>(p.n) + p.m) + 1000; }

  Status Forward(OpKernelContext* ctx, const LossParams& p, const float* pred, const float* gt, float* loss) {
    auto* workers = ctx->device()->tensorflow_cpu_worker_threads();
    std::atomic<int> rc{PL_OK};
    tensorflow::Shard(workers->num_threads, workers->workers, p.batch, Cost(p), [&](int64_t begin, int64_t end) {
      const int r = pl_cpu_forward(pred, gt, p.batch, p.n, p.m, p.height, p.width, p.scale, loss,
                                   static_cast<int>(begin), static_cast<int>(end));
      if (r != PL_OK) rc = r;
    });
    return CoreStatus(rc, "ProjectionIouLoss");
  }

  Status ForwardBackward(OpKernelContext* ctx, const LossParams& p, const float* pred, const float* gt, float* loss,
                         float* grad_unit) {
    auto* workers = ctx->device()->tensorflow_cpu_worker_threads();
    std::atomic<int> rc{PL_OK};
    tensorflow::Shard(workers->num_threads, workers->workers, p.batch, 3 * Cost(p),
                      [&](int64_t begin, int64_t end) {
                        const int r = pl_cpu_forward_backward(pred, gt, p.batch, p.n, p.m, p.height, p.width,
                                                              p.scale, loss, grad_unit, static_cast<int>(begin),
                                                              static_cast<int>(end));
                        if (r != PL_OK) rc = r;
                      });
    return CoreStatus(rc, "ProjectionIouLoss");
  }

  Status Backward(OpKernelContext* ctx, const LossParams& p, const float* pred, const float* gt,
                  const float* grad_loss, float* grad_pred) {
    auto* workers = ctx->device()->tensorflow_cpu_worker_threads();
    std::atomic<int> rc{PL_OK};
    tensorflow::Shard(workers->num_threads, workers->workers, p.batch, 3 * Cost(p),
                      [&](int64_t begin, int64_t end) {
                        const int r = pl_cpu_backward(pred, gt, grad_loss, p.batch, p.n, p.m, p.height, p.width,
                                                      p.scale, grad_pred, static_cast<int>(begin),
                                                      static_cast<int>(end));
                        if (r != PL_OK) rc = r;
                      });
    return CoreStatus(rc, "ProjectionIouLossGrad");
  }
};

#if GOOGLE_CUDA
template <>
struct ProjectionIouLossFunctor<GPUDevice> {
  Status Workspace(OpKernelContext* ctx, const LossParams& p, Tensor* ws, size_t* bytes) {
    *bytes = pl_cuda_workspace_bytes(p.batch, p.height, p.width, p.scale);
    return ctx->allocate_temp(tensorflow::DT_INT8, TensorShape({static_cast<int64_t>(*bytes) + 1}), ws);
  }

  Status Forward(OpKernelContext* ctx, const LossParams& p, const float* pred, const float* gt, float* loss) {
    Tensor ws;
    size_t bytes = 0;
    TF_RETURN_IF_ERROR(Workspace(ctx, p, &ws, &bytes));
    void* stream = static_cast<void*>(ctx->eigen_device<GPUDevice>().stream());
    return CoreStatus(pl_cuda_forward(pred, gt, p.batch, p.n, p.m, p.height, p.width, p.scale, loss,
                                      ws.flat<int8_t>().data(), bytes, stream),
                      "ProjectionIouLoss (GPU)");
  }

  Status ForwardBackward(OpKernelContext* ctx, const LossParams& p, const float* pred, const float* gt, float* loss,
                         float* grad_unit) {
    Tensor ws;
    size_t bytes = 0;
    TF_RETURN_IF_ERROR(Workspace(ctx, p, &ws, &bytes));
    void* stream = static_cast<void*>(ctx->eigen_device<GPUDevice>().stream());
    return CoreStatus(pl_cuda_forward_backward(pred, gt, p.batch, p.n, p.m, p.height, p.width, p.scale, loss,
                                               grad_unit, ws.flat<int8_t>().data(), bytes, stream),
                      "ProjectionIouLoss (GPU)");
  }

  Status Backward(OpKernelContext* ctx, const LossParams& p, const float* pred, const float* gt,
                  const float* grad_loss, float* grad_pred) {
    Tensor ws;
    size_t bytes = 0;
    TF_RETURN_IF_ERROR(Workspace(ctx, p, &ws, &bytes));
    void* stream = static_cast<void*>(ctx->eigen_device<GPUDevice>().stream());
    return CoreStatus(pl_cuda_backward(pred, gt, grad_loss, p.batch, p.n, p.m, p.height, p.width, p.scale,
                                       grad_pred, ws.flat<int8_t>().data(), bytes, stream),
                      "ProjectionIouLossGrad (GPU)");
  }
};
#endif  // GOOGLE_CUDA

// Attribute and input checks shared by both ops.
class ProjectionIouLossBase : public OpKernel {
 public:
  explicit ProjectionIouLossBase(OpKernelConstruction* ctx) : OpKernel(ctx) {
    OP_REQUIRES_OK(ctx, ctx->GetAttr("height", &height_));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("width", &width_));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("scale", &scale_));
    OP_REQUIRES(ctx, height_ > 0, InvalidArgument("height must be > 0, got ", height_));
    OP_REQUIRES(ctx, width_ > 0, InvalidArgument("width must be > 0, got ", width_));
    OP_REQUIRES(ctx, scale_ > 0.0f && std::isfinite(scale_),
                InvalidArgument("scale must be > 0 and finite, got ", scale_));
    int hs = 0, ws = 0;
    const int rc = pl_drawn_size(height_, width_, scale_, &hs, &ws);
    OP_REQUIRES(ctx, rc != PL_ERR_IMAGE_TOO_LARGE,
                InvalidArgument("height, width, scale: the drawn image round(height*scale) x round(width*scale) "
                                "must have at most 2^24 pixels, got height=",
                                height_, " width=", width_, " scale=", scale_));
    OP_REQUIRES(ctx, rc == PL_OK,
                InvalidArgument("height, width, scale: round(height*scale) and round(width*scale) must be >= 1, "
                                "got height=",
                                height_, " width=", width_, " scale=", scale_));
  }

 protected:
  // Validates pred/gt and fills p; returns false (with the context failed) on a bad input.
  bool CheckPoints(OpKernelContext* ctx, const Tensor& pred, const Tensor& gt, LossParams* p) {
    if (!CheckOne(ctx, pred, "pred_points_2d") || !CheckOne(ctx, gt, "gt_points_2d")) return false;
    if (pred.dim_size(0) != gt.dim_size(0)) {
      ctx->CtxFailure(__FILE__, __LINE__,
                      InvalidArgument("pred_points_2d and gt_points_2d must have the same batch size, got ",
                                      pred.dim_size(0), " and ", gt.dim_size(0)));
      return false;
    }
    p->batch = static_cast<int>(pred.dim_size(0));
    p->n = static_cast<int>(pred.dim_size(1));
    p->m = static_cast<int>(gt.dim_size(1));
    p->height = height_;
    p->width = width_;
    p->scale = scale_;
    return true;
  }

  int height_ = 0, width_ = 0;
  float scale_ = 1.0f;

 private:
  bool CheckOne(OpKernelContext* ctx, const Tensor& t, const char* name) {
    Status s;
    if (t.dtype() != tensorflow::DT_FLOAT) {
      s = InvalidArgument(name, " must be float32, got ", tensorflow::DataTypeString(t.dtype()));
    } else if (t.dims() != 3) {
      s = InvalidArgument(name, " must be rank 3 [B, N, 2], got shape ", t.shape().DebugString());
    } else if (t.dim_size(2) != 2) {
      s = InvalidArgument(name, " must have last dimension 2 (u, v), got shape ", t.shape().DebugString());
    } else if (t.dim_size(1) <= 0) {
      s = InvalidArgument(name, " must have N > 0 points, got shape ", t.shape().DebugString());
    } else if (t.dim_size(0) > std::numeric_limits<int>::max() / 2 ||
               t.dim_size(1) > std::numeric_limits<int>::max() / 2 ||
               t.NumElements() > std::numeric_limits<int64_t>::max() / 4) {
      s = InvalidArgument(name, " is too large, got shape ", t.shape().DebugString());
    }
    if (!s.ok()) {
      ctx->CtxFailure(__FILE__, __LINE__, s);
      return false;
    }
    return true;
  }
};

// kFused = false: ProjectionIouLoss (loss only); true: ProjectionIouLossWithGrad (loss and unit gradient).
template <typename Device, bool kFused>
class ProjectionIouLossOp : public ProjectionIouLossBase {
 public:
  explicit ProjectionIouLossOp(OpKernelConstruction* ctx) : ProjectionIouLossBase(ctx) {}

  void Compute(OpKernelContext* ctx) override {
    const Tensor& pred = ctx->input(0);
    const Tensor& gt = ctx->input(1);
    LossParams p;
    if (!CheckPoints(ctx, pred, gt, &p)) return;
    Tensor* loss = nullptr;
    Tensor* grad_unit = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, TensorShape({p.batch}), &loss));
    if (kFused) OP_REQUIRES_OK(ctx, ctx->allocate_output(1, pred.shape(), &grad_unit));
    if (p.batch == 0) return;
    ProjectionIouLossFunctor<Device> functor;
    if (kFused) {
      OP_REQUIRES_OK(ctx, functor.ForwardBackward(ctx, p, pred.flat<float>().data(), gt.flat<float>().data(),
                                                  loss->flat<float>().data(), grad_unit->flat<float>().data()));
    } else {
      OP_REQUIRES_OK(ctx, functor.Forward(ctx, p, pred.flat<float>().data(), gt.flat<float>().data(),
                                          loss->flat<float>().data()));
    }
  }
};

template <typename Device>
class ProjectionIouLossGradOp : public ProjectionIouLossBase {
 public:
  explicit ProjectionIouLossGradOp(OpKernelConstruction* ctx) : ProjectionIouLossBase(ctx) {}

  void Compute(OpKernelContext* ctx) override {
    const Tensor& pred = ctx->input(0);
    const Tensor& gt = ctx->input(1);
    const Tensor& grad_loss = ctx->input(2);
    LossParams p;
    if (!CheckPoints(ctx, pred, gt, &p)) return;
    OP_REQUIRES(ctx, grad_loss.dtype() == tensorflow::DT_FLOAT,
                InvalidArgument("grad_loss must be float32, got ", tensorflow::DataTypeString(grad_loss.dtype())));
    OP_REQUIRES(ctx, grad_loss.dims() == 1 && grad_loss.dim_size(0) == p.batch,
                InvalidArgument("grad_loss must have shape [B] = [", p.batch, "], got ",
                                grad_loss.shape().DebugString()));
    Tensor* grad = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, pred.shape(), &grad));
    if (p.batch == 0) return;
    OP_REQUIRES_OK(ctx, ProjectionIouLossFunctor<Device>().Backward(
                            ctx, p, pred.flat<float>().data(), gt.flat<float>().data(),
                            grad_loss.flat<float>().data(), grad->flat<float>().data()));
  }
};

REGISTER_KERNEL_BUILDER(Name("ProjectionIouLoss").Device(DEVICE_CPU), ProjectionIouLossOp<CPUDevice, false>);
REGISTER_KERNEL_BUILDER(Name("ProjectionIouLossWithGrad").Device(DEVICE_CPU),
                        ProjectionIouLossOp<CPUDevice, true>);
REGISTER_KERNEL_BUILDER(Name("ProjectionIouLossGrad").Device(DEVICE_CPU), ProjectionIouLossGradOp<CPUDevice>);

#if GOOGLE_CUDA
REGISTER_KERNEL_BUILDER(Name("ProjectionIouLoss").Device(::tensorflow::DEVICE_GPU),
                        ProjectionIouLossOp<GPUDevice, false>);
REGISTER_KERNEL_BUILDER(Name("ProjectionIouLossWithGrad").Device(::tensorflow::DEVICE_GPU),
                        ProjectionIouLossOp<GPUDevice, true>);
REGISTER_KERNEL_BUILDER(Name("ProjectionIouLossGrad").Device(::tensorflow::DEVICE_GPU),
                        ProjectionIouLossGradOp<GPUDevice>);
#endif  // GOOGLE_CUDA

}  // namespace synthpose
