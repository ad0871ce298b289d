// Projection Loss core: framework-free C ABI (CPU + CUDA) for the silhouette IoU loss of projected point clouds.
//
// The exact rules (pixel of a point, which point owns a pixel, the gradient) are in docs/projection_loss.md.
// Summary:
//   * Drawn image size: Hs = floor(height * scale + 0.5), Ws = floor(width * scale + 0.5) (computed in double).
//   * A 2D point (u, v) in camera pixels goes to (us, vs) = (fl32(u * scale), fl32(v * scale)); its pixel is
//     col = round_half_up(us), row = round_half_up(vs) with round_half_up(x) = floor(x) + (x - floor(x) >= 0.5).
//     It is drawn when us, vs are finite and 0 <= col < Ws, 0 <= row < Hs.
//   * loss = 1 - I / U per batch element (I, U: pixel counts of the binary images), 0 when both images are empty.
//   * The backward pass returns dL/d(pred_points_2d); the gt points get no gradient.
//
// All pointers are contiguous row-major float32: pred [B, N, 2], gt [B, M, 2], loss [B], grad_loss [B],
// grad_pred [B, N, 2]. Functions return PL_OK (0) or a negative error code (see pl_error_string).
//
// Floating point: the sources must be compiled without FMA contraction (g++: -ffp-contract=off, which is also the
// default for -std=c++17 on x86-64 without -mfma; nvcc: the CUDA code uses __fmul_rn/__fadd_rn explicitly), so that
// the CPU kernel, the CUDA kernel and the pure-TF reference put every point in the same pixel.
#ifndef SYNTHPOSE_PROJECTION_LOSS_CORE_H_
#define SYNTHPOSE_PROJECTION_LOSS_CORE_H_

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define PL_OK 0
#define PL_ERR_INVALID_ARGUMENT -1
#define PL_ERR_IMAGE_TOO_LARGE -2
#define PL_ERR_CUDA -3
#define PL_ERR_NO_CUDA -4
#define PL_ERR_WORKSPACE -5

// Largest drawn image (Hs * Ws pixels) accepted; counts stay exact in float32 below 2^24.
#define PL_MAX_DRAWN_PIXELS (1 << 24)
// Neighbourhood (Chebyshev radius, drawn pixels) searched by the backward pass, and the tent width (drawn pixels).
#define PL_WINDOW_RADIUS 2
#define PL_TENT_WIDTH 3.0f

// Human-readable text for a return code.
const char* pl_error_string(int code);

// Drawn image size for (height, width, scale). Returns PL_ERR_INVALID_ARGUMENT when height/width/scale are not
// > 0 or the size rounds to 0, PL_ERR_IMAGE_TOO_LARGE when Hs * Ws > PL_MAX_DRAWN_PIXELS.
int pl_drawn_size(int height, int width, float scale, int* drawn_height, int* drawn_width);

// ---- CPU. Processes batch elements [batch_begin, batch_end) so a thread pool can split the batch; the arrays are
// the full [B, ...] arrays. Thread-safe (per-thread scratch).
int pl_cpu_forward(const float* pred, const float* gt, int batch, int n_pred, int n_gt, int height, int width,
                   float scale, float* loss, int batch_begin, int batch_end);
// Writes grad_pred[b] for b in [batch_begin, batch_end) (overwrites; zero for points that get no gradient).
int pl_cpu_backward(const float* pred, const float* gt, const float* grad_loss, int batch, int n_pred, int n_gt,
                    int height, int width, float scale, float* grad_pred, int batch_begin, int batch_end);

// Fused forward + unit backward (one drawing): loss[b] and grad_unit[b] = dloss[b]/dpred[b] (grad_loss = 1).
// The gradient for an upstream grad_loss is grad_loss[b] * grad_unit[b] (equal to pl_cpu_backward up to float
// rounding of the product).
int pl_cpu_forward_backward(const float* pred, const float* gt, int batch, int n_pred, int n_gt, int height,
                            int width, float scale, float* loss, float* grad_unit, int batch_begin, int batch_end);

// ---- CUDA. All arrays are device pointers; `stream` is a cudaStream_t (NULL: default stream). Asynchronous:
// returns after enqueuing. `workspace` is device memory of at least pl_cuda_workspace_bytes(...) bytes (any
// content). Returns PL_ERR_NO_CUDA when the library was built without CUDA.
int pl_cuda_available(void);  // 1 when compiled with CUDA and a device is visible, else 0
size_t pl_cuda_workspace_bytes(int batch, int height, int width, float scale);
int pl_cuda_forward(const float* pred, const float* gt, int batch, int n_pred, int n_gt, int height, int width,
                    float scale, float* loss, void* workspace, size_t workspace_bytes, void* stream);
int pl_cuda_backward(const float* pred, const float* gt, const float* grad_loss, int batch, int n_pred, int n_gt,
                     int height, int width, float scale, float* grad_pred, void* workspace, size_t workspace_bytes,
                     void* stream);
// Fused forward + unit backward, as pl_cpu_forward_backward.
int pl_cuda_forward_backward(const float* pred, const float* gt, int batch, int n_pred, int n_gt, int height,
                             int width, float scale, float* loss, float* grad_unit, void* workspace,
                             size_t workspace_bytes, void* stream);

#ifdef __cplusplus
}  // extern "C"
#endif

#endif  // SYNTHPOSE_PROJECTION_LOSS_CORE_H_
