// Projection Loss core, CUDA implementation (framework-free). Same rules as projection_loss_core.cc (see
// docs/projection_loss.md); all float arithmetic that decides a pixel, a pixel owner or a gradient value uses
// the IEEE round-to-nearest intrinsics (__fmul_rn, __fadd_rn, ...) so it is never contracted into FMAs and gives
// the same results as the CPU code. Only the summation order of the gradient of one point differs (atomics).
//
// Workspace layout (device memory, pl_cuda_workspace_bytes): own keys uint64 [B*Hs*Ws] (owner of each pred pixel:
// (float bits of the squared distance to the pixel centre << 32) | point index, all ones = empty), gt owner uint32
// [B*Hs*Ws] (lowest gt index, all ones = empty), counters uint32 [B*3] (|X|, |Y|, I).
#include <cuda_runtime.h>

#include <cstdint>

#include "projection_loss_core.h"

namespace {

constexpr int kRadius = PL_WINDOW_RADIUS;
constexpr float kTent = PL_TENT_WIDTH;
constexpr int kThreads = 256;
constexpr unsigned long long kEmptyKey = ~0ull;
constexpr uint32_t kEmpty = 0xFFFFFFFFu;

struct Geometry {
  int batch, n, m, hs, ws;
  float scale;
  int64_t pixels;  // hs * ws
};

struct Workspace {
  unsigned long long* own;
  uint32_t* gown;
  uint32_t* counts;  // [B][3]: nx, ny, ni
};

inline size_t Align256(size_t x) { return (x + 255) & ~static_cast<size_t>(255); }

size_t WorkspaceBytes(int batch, int64_t pixels) {
  const size_t bp = static_cast<size_t>(batch) * static_cast<size_t>(pixels);
  return Align256(bp * sizeof(unsigned long long)) + Align256(bp * sizeof(uint32_t)) +
         Align256(static_cast<size_t>(batch) * 3 * sizeof(uint32_t));
}

Workspace Carve(void* base, int batch, int64_t pixels) {
  const size_t bp = static_cast<size_t>(batch) * static_cast<size_t>(pixels);
  char* p = static_cast<char*>(base);
  Workspace w;
  w.own = reinterpret_cast<unsigned long long*>(p);
  p += Align256(bp * sizeof(unsigned long long));
  w.gown = reinterpret_cast<uint32_t*>(p);
  p += Align256(bp * sizeof(uint32_t));
  w.counts = reinterpret_cast<uint32_t*>(p);
  return w;
}

__device__ __forceinline__ bool PixelOf(float u, float v, float scale, int hs, int ws, int* pixel, float* us_out,
                                        float* vs_out, float* d2) {
  const float us = __fmul_rn(u, scale);
  const float vs = __fmul_rn(v, scale);
  if (!isfinite(us) || !isfinite(vs)) return false;
  const float fu = floorf(us);
  const float fv = floorf(vs);
  const float cu = __fadd_rn(fu, (__fsub_rn(us, fu) >= 0.5f) ? 1.0f : 0.0f);
  const float cv = __fadd_rn(fv, (__fsub_rn(vs, fv) >= 0.5f) ? 1.0f : 0.0f);
  if (!(cu >= 0.0f && cu < static_cast<float>(ws) && cv >= 0.0f && cv < static_cast<float>(hs))) return false;
  const float dx = __fsub_rn(us, cu);
  const float dy = __fsub_rn(vs, cv);
  *d2 = __fadd_rn(__fmul_rn(dx, dx), __fmul_rn(dy, dy));
  *us_out = us;
  *vs_out = vs;
  *pixel = static_cast<int>(cv) * ws + static_cast<int>(cu);
  return true;
}

__global__ void DrawGtKernel(const float* __restrict__ gt, Geometry g, Workspace w) {
  const int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= static_cast<int64_t>(g.batch) * g.m) return;
  const int b = static_cast<int>(idx / g.m);
  const uint32_t j = static_cast<uint32_t>(idx - static_cast<int64_t>(b) * g.m);
  int p;
  float us, vs, d2;
  if (!PixelOf(gt[2 * idx], gt[2 * idx + 1], g.scale, g.hs, g.ws, &p, &us, &vs, &d2)) return;
  const uint32_t old = atomicMin(&w.gown[b * g.pixels + p], j);
  if (old == kEmpty) atomicAdd(&w.counts[3 * b + 1], 1u);
}

// Must run after DrawGtKernel (reads the complete gt image to count I).
__global__ void DrawPredKernel(const float* __restrict__ pred, Geometry g, Workspace w) {
  const int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= static_cast<int64_t>(g.batch) * g.n) return;
  const int b = static_cast<int>(idx / g.n);
  const uint32_t i = static_cast<uint32_t>(idx - static_cast<int64_t>(b) * g.n);
  int p;
  float us, vs, d2;
  if (!PixelOf(pred[2 * idx], pred[2 * idx + 1], g.scale, g.hs, g.ws, &p, &us, &vs, &d2)) return;
  const unsigned long long key = (static_cast<unsigned long long>(__float_as_uint(d2)) << 32) | i;
  const int64_t q = b * g.pixels + p;
  const unsigned long long old = atomicMin(&w.own[q], key);
  if (old == kEmptyKey) {
    atomicAdd(&w.counts[3 * b], 1u);
    if (w.gown[q] != kEmpty) atomicAdd(&w.counts[3 * b + 2], 1u);
  }
}

__global__ void LossKernel(Geometry g, Workspace w, float* __restrict__ loss) {
  const int b = blockIdx.x * blockDim.x + threadIdx.x;
  if (b >= g.batch) return;
  const uint32_t nx = w.counts[3 * b], ny = w.counts[3 * b + 1], ni = w.counts[3 * b + 2];
  const uint32_t uni = nx + ny - ni;
  loss[b] = (uni == 0) ? 0.0f : __fsub_rn(1.0f, __fdiv_rn(static_cast<float>(ni), static_cast<float>(uni)));
}

// The same coefficient expressions as the CPU code, evaluated left to right without contraction.
__device__ __forceinline__ float CoefMissing(float grad_loss, float uf, float scale) {
  return __fdiv_rn(__fmul_rn(__fmul_rn(grad_loss, __fdiv_rn(1.0f, uf)), scale), kTent);
}
__device__ __forceinline__ float CoefExtra(float grad_loss, float inter, float uf, float scale) {
  return __fdiv_rn(__fmul_rn(__fmul_rn(grad_loss, __fdiv_rn(inter, __fmul_rn(uf, uf))), scale), kTent);
}

// One thread per pred point; the owner of an extra pixel (pred on, gt off) writes its own gradient (no atomics:
// a point owns at most one pixel). grad_pred must be zero beforehand.
__global__ void ExtraKernel(const float* __restrict__ pred, const float* __restrict__ grad_loss, Geometry g,
                            Workspace w, float* __restrict__ grad_pred) {
  const int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= static_cast<int64_t>(g.batch) * g.n) return;
  const int b = static_cast<int>(idx / g.n);
  const uint32_t i = static_cast<uint32_t>(idx - static_cast<int64_t>(b) * g.n);
  const uint32_t nx = w.counts[3 * b], ny = w.counts[3 * b + 1], ni = w.counts[3 * b + 2];
  const uint32_t uni = nx + ny - ni;
  const float gl = grad_loss != nullptr ? grad_loss[b] : 1.0f;  // nullptr: unit upstream gradient
  if (uni == 0 || ni == 0 || gl == 0.0f) return;
  int p;
  float us, vs, d2;
  if (!PixelOf(pred[2 * idx], pred[2 * idx + 1], g.scale, g.hs, g.ws, &p, &us, &vs, &d2)) return;
  const int64_t base = b * g.pixels;
  if (static_cast<uint32_t>(w.own[base + p] & 0xFFFFFFFFull) != i || w.gown[base + p] != kEmpty) return;
  const float coef = CoefExtra(gl, static_cast<float>(ni), static_cast<float>(uni), g.scale);
  const int row = p / g.ws, col = p - row * g.ws;
  int best = -1, best_d2 = 1 << 30;
  for (int dr = -kRadius; dr <= kRadius; ++dr) {
    const int r = row + dr;
    if (r < 0 || r >= g.hs) continue;
    for (int dc = -kRadius; dc <= kRadius; ++dc) {
      const int cc = col + dc;
      if (cc < 0 || cc >= g.ws) continue;
      const int q = r * g.ws + cc;
      if (w.gown[base + q] == kEmpty) continue;
      const int dd = dr * dr + dc * dc;
      if (dd < best_d2) {
        best_d2 = dd;
        best = q;
      }
    }
  }
  float gx = 0.0f, gy = 0.0f;
  if (best >= 0) {
    const int br = best / g.ws, bc = best - br * g.ws;
    const float vx = __fsub_rn(us, static_cast<float>(bc));
    const float vy = __fsub_rn(vs, static_cast<float>(br));
    const float d = __fsqrt_rn(__fadd_rn(__fmul_rn(vx, vx), __fmul_rn(vy, vy)));
    gx = __fdiv_rn(__fmul_rn(coef, vx), d);
    gy = __fdiv_rn(__fmul_rn(coef, vy), d);
  } else {
    const float vx = __fsub_rn(us, static_cast<float>(col));
    const float vy = __fsub_rn(vs, static_cast<float>(row));
    const float d = __fsqrt_rn(__fadd_rn(__fmul_rn(vx, vx), __fmul_rn(vy, vy)));
    if (d > 0.0f) {
      gx = -__fdiv_rn(__fmul_rn(coef, vx), d);
      gy = -__fdiv_rn(__fmul_rn(coef, vy), d);
    }
  }
  grad_pred[2 * idx] += gx;
  grad_pred[2 * idx + 1] += gy;
}

// One thread per gt point; the lowest gt index of a missing pixel (gt on, pred off) pulls the nearest owner of
// the drawn pixels in its window toward the pixel centre (atomicAdd: a point may be pulled by many pixels).
__global__ void MissingKernel(const float* __restrict__ pred, const float* __restrict__ gt,
                              const float* __restrict__ grad_loss, Geometry g, Workspace w,
                              float* __restrict__ grad_pred) {
  const int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= static_cast<int64_t>(g.batch) * g.m) return;
  const int b = static_cast<int>(idx / g.m);
  const uint32_t j = static_cast<uint32_t>(idx - static_cast<int64_t>(b) * g.m);
  const uint32_t nx = w.counts[3 * b], ny = w.counts[3 * b + 1], ni = w.counts[3 * b + 2];
  const uint32_t uni = nx + ny - ni;
  const float gl = grad_loss != nullptr ? grad_loss[b] : 1.0f;  // nullptr: unit upstream gradient
  if (uni == 0 || gl == 0.0f) return;
  int p;
  float us, vs, d2;
  if (!PixelOf(gt[2 * idx], gt[2 * idx + 1], g.scale, g.hs, g.ws, &p, &us, &vs, &d2)) return;
  const int64_t base = b * g.pixels;
  if (w.gown[base + p] != j || w.own[base + p] != kEmptyKey) return;
  const int row = p / g.ws, col = p - row * g.ws;
  const float fr = static_cast<float>(row), fc = static_cast<float>(col);
  const float* pb = pred + static_cast<int64_t>(b) * g.n * 2;
  int best = -1;
  float best_d2 = 0.0f, best_vx = 0.0f, best_vy = 0.0f;
  for (int dr = -kRadius; dr <= kRadius; ++dr) {
    const int r = row + dr;
    if (r < 0 || r >= g.hs) continue;
    for (int dc = -kRadius; dc <= kRadius; ++dc) {
      const int cc = col + dc;
      if (cc < 0 || cc >= g.ws) continue;
      const unsigned long long key = w.own[base + r * g.ws + cc];
      if (key == kEmptyKey) continue;
      const int k = static_cast<int>(key & 0xFFFFFFFFull);
      const float vx = __fsub_rn(__fmul_rn(pb[2 * k], g.scale), fc);
      const float vy = __fsub_rn(__fmul_rn(pb[2 * k + 1], g.scale), fr);
      const float dd = __fadd_rn(__fmul_rn(vx, vx), __fmul_rn(vy, vy));
      if (best < 0 || dd < best_d2 || (dd == best_d2 && k < best)) {
        best = k;
        best_d2 = dd;
        best_vx = vx;
        best_vy = vy;
      }
    }
  }
  if (best < 0) return;
  const float coef = CoefMissing(gl, static_cast<float>(uni), g.scale);
  const float d = __fsqrt_rn(best_d2);
  float* gp = grad_pred + (static_cast<int64_t>(b) * g.n + best) * 2;
  atomicAdd(gp, __fdiv_rn(__fmul_rn(coef, best_vx), d));
  atomicAdd(gp + 1, __fdiv_rn(__fmul_rn(coef, best_vy), d));
}

int Setup(const float* pred, const float* gt, int batch, int n, int m, int height, int width, float scale,
          void* workspace, size_t workspace_bytes, Geometry* g, Workspace* w) {
  if (pred == nullptr || gt == nullptr || batch < 0 || n <= 0 || m <= 0) return PL_ERR_INVALID_ARGUMENT;
  int hs, ws;
  const int rc = pl_drawn_size(height, width, scale, &hs, &ws);
  if (rc != PL_OK) return rc;
  g->batch = batch;
  g->n = n;
  g->m = m;
  g->hs = hs;
  g->ws = ws;
  g->scale = scale;
  g->pixels = static_cast<int64_t>(hs) * ws;
  if (batch > 0 && (workspace == nullptr || workspace_bytes < WorkspaceBytes(batch, g->pixels)))
    return PL_ERR_WORKSPACE;
  *w = Carve(workspace, batch, g->pixels);
  return PL_OK;
}

inline unsigned Blocks(int64_t count) { return static_cast<unsigned>((count + kThreads - 1) / kThreads); }

// Clears the workspace and draws both images (counts in w.counts).
cudaError_t Draw(const float* pred, const float* gt, const Geometry& g, const Workspace& w, cudaStream_t stream) {
  const size_t bp = static_cast<size_t>(g.batch) * static_cast<size_t>(g.pixels);
  cudaError_t err = cudaMemsetAsync(w.own, 0xFF, bp * sizeof(unsigned long long), stream);
  if (err != cudaSuccess) return err;
  err = cudaMemsetAsync(w.gown, 0xFF, bp * sizeof(uint32_t), stream);
  if (err != cudaSuccess) return err;
  err = cudaMemsetAsync(w.counts, 0, static_cast<size_t>(g.batch) * 3 * sizeof(uint32_t), stream);
  if (err != cudaSuccess) return err;
  DrawGtKernel<<<Blocks(static_cast<int64_t>(g.batch) * g.m), kThreads, 0, stream>>>(gt, g, w);
  DrawPredKernel<<<Blocks(static_cast<int64_t>(g.batch) * g.n), kThreads, 0, stream>>>(pred, g, w);
  return cudaGetLastError();
}

// Draws both images, then writes the loss (when loss != nullptr) and the gradient (when grad != nullptr):
// grad_loss scales each item's gradient, nullptr meaning 1 (the unit gradient of forward_backward).
int Run(const float* pred, const float* gt, const float* grad_loss, int batch, int n_pred, int n_gt, int height,
        int width, float scale, float* loss, float* grad, void* workspace, size_t workspace_bytes, void* stream) {
  Geometry g;
  Workspace w;
  const int rc = Setup(pred, gt, batch, n_pred, n_gt, height, width, scale, workspace, workspace_bytes, &g, &w);
  if (rc != PL_OK) return rc;
  if (batch == 0) return PL_OK;
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  if (grad != nullptr &&
      cudaMemsetAsync(grad, 0, static_cast<size_t>(batch) * n_pred * 2 * sizeof(float), s) != cudaSuccess)
    return PL_ERR_CUDA;
  if (Draw(pred, gt, g, w, s) != cudaSuccess) return PL_ERR_CUDA;
  if (loss != nullptr) LossKernel<<<Blocks(batch), kThreads, 0, s>>>(g, w, loss);
  if (grad != nullptr) {
    ExtraKernel<<<Blocks(static_cast<int64_t>(batch) * n_pred), kThreads, 0, s>>>(pred, grad_loss, g, w, grad);
    MissingKernel<<<Blocks(static_cast<int64_t>(batch) * n_gt), kThreads, 0, s>>>(pred, gt, grad_loss, g, w, grad);
  }
  return cudaGetLastError() == cudaSuccess ? PL_OK : PL_ERR_CUDA;
}

}  // namespace

extern "C" {

int pl_cuda_available(void) {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess) {
    cudaGetLastError();  // clear the sticky "no device" error
    return 0;
  }
  return count > 0 ? 1 : 0;
}

size_t pl_cuda_workspace_bytes(int batch, int height, int width, float scale) {
  int hs, ws;
  if (batch < 0 || pl_drawn_size(height, width, scale, &hs, &ws) != PL_OK) return 0;
  return WorkspaceBytes(batch, static_cast<int64_t>(hs) * ws);
}

int pl_cuda_forward(const float* pred, const float* gt, int batch, int n_pred, int n_gt, int height, int width,
                    float scale, float* loss, void* workspace, size_t workspace_bytes, void* stream) {
  if (loss == nullptr) return PL_ERR_INVALID_ARGUMENT;
  return Run(pred, gt, nullptr, batch, n_pred, n_gt, height, width, scale, loss, nullptr, workspace,
             workspace_bytes, stream);
}

int pl_cuda_backward(const float* pred, const float* gt, const float* grad_loss, int batch, int n_pred, int n_gt,
                     int height, int width, float scale, float* grad_pred, void* workspace, size_t workspace_bytes,
                     void* stream) {
  if (grad_loss == nullptr || grad_pred == nullptr) return PL_ERR_INVALID_ARGUMENT;
  return Run(pred, gt, grad_loss, batch, n_pred, n_gt, height, width, scale, nullptr, grad_pred, workspace,
             workspace_bytes, stream);
}

int pl_cuda_forward_backward(const float* pred, const float* gt, int batch, int n_pred, int n_gt, int height,
                             int width, float scale, float* loss, float* grad_unit, void* workspace,
                             size_t workspace_bytes, void* stream) {
  if (loss == nullptr || grad_unit == nullptr) return PL_ERR_INVALID_ARGUMENT;
  return Run(pred, gt, nullptr, batch, n_pred, n_gt, height, width, scale, loss, grad_unit, workspace,
             workspace_bytes, stream);
}

}  // extern "C"
