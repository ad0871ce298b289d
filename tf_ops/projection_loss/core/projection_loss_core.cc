// Projection Loss core, CPU implementation (framework-free). See projection_loss_core.h and
// docs/projection_loss.md for the exact rules; projection_loss_core.cu implements the same rules on the GPU.
//
// Build note: compile with -ffp-contract=off (no FMA contraction). When projection_loss_core.cu is linked in as
// well, define PL_WITH_CUDA so that the CUDA stubs below are left out.
#include "projection_loss_core.h"

#include <cmath>
#include <cstdint>
#include <vector>

#if defined(__clang__)
#pragma clang fp contract(off)
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif

namespace {

constexpr int kRadius = PL_WINDOW_RADIUS;
constexpr float kTent = PL_TENT_WIDTH;

// Pixel of one point in the drawn image; returns false when the point is not drawn.
// (us, vs): the point in drawn-image pixels; (row, col): its pixel; d2: squared distance to the pixel centre.
inline bool PixelOf(float u, float v, float scale, int hs, int ws, int* pixel, float* us_out, float* vs_out,
                    float* d2) {
  const float us = u * scale;
  const float vs = v * scale;
  if (!std::isfinite(us) || !std::isfinite(vs)) return false;
  const float fu = std::floor(us);
  const float fv = std::floor(vs);
  const float cu = fu + ((us - fu) >= 0.5f ? 1.0f : 0.0f);
  const float cv = fv + ((vs - fv) >= 0.5f ? 1.0f : 0.0f);
  if (!(cu >= 0.0f && cu < static_cast<float>(ws) && cv >= 0.0f && cv < static_cast<float>(hs))) return false;
  const float dx = us - cu;
  const float dy = vs - cv;
  const float dxx = dx * dx;
  const float dyy = dy * dy;
  *d2 = dxx + dyy;
  *us_out = us;
  *vs_out = vs;
  *pixel = static_cast<int>(cv) * ws + static_cast<int>(cu);
  return true;
}

// Per-thread scratch. Invariant between calls: own and gown are all -1.
struct Scratch {
  std::vector<int32_t> own;   // [Hs*Ws] owner (pred point index) of each drawn pixel, -1 = not drawn
  std::vector<int32_t> gown;  // [Hs*Ws] lowest gt point index in each gt pixel, -1 = not drawn
  std::vector<int32_t> pix;   // [N] pixel of each pred point, -1 = not drawn
  std::vector<float> d2;      // [N] squared distance of each pred point to its pixel centre
  std::vector<float> us, vs;  // [N] pred points in drawn pixels
  std::vector<int32_t> gpix;  // [M] pixel of each gt point, -1 = not drawn

  void Prepare(int64_t pixels, int n, int m) {
    if (static_cast<int64_t>(own.size()) < pixels) {
      own.assign(pixels, -1);
      gown.assign(pixels, -1);
    }
    if (static_cast<int>(pix.size()) < n) {
      pix.resize(n);
      d2.resize(n);
      us.resize(n);
      vs.resize(n);
    }
    if (static_cast<int>(gpix.size()) < m) gpix.resize(m);
  }
};

thread_local Scratch tls_scratch;

struct Counts {
  int64_t inter = 0, uni = 0;
};

// Draws both images of one batch element into the scratch maps; returns I and U.
Counts Draw(Scratch& s, const float* pred, const float* gt, int n, int m, float scale, int hs, int ws) {
  int64_t nx = 0, ny = 0, ni = 0;
  float dummy_u, dummy_v, dummy_d2;
  for (int j = 0; j < m; ++j) {
    int p;
    if (PixelOf(gt[2 * j], gt[2 * j + 1], scale, hs, ws, &p, &dummy_u, &dummy_v, &dummy_d2)) {
      s.gpix[j] = p;
      if (s.gown[p] < 0) {
        s.gown[p] = j;
        ++ny;
      }
    } else {
      s.gpix[j] = -1;
    }
  }
  for (int i = 0; i < n; ++i) {
    int p;
    float d2;
    if (PixelOf(pred[2 * i], pred[2 * i + 1], scale, hs, ws, &p, &s.us[i], &s.vs[i], &d2)) {
      s.pix[i] = p;
      s.d2[i] = d2;
      const int32_t o = s.own[p];
      if (o < 0) {
        s.own[p] = i;
        ++nx;
        if (s.gown[p] >= 0) ++ni;
      } else if (d2 < s.d2[o]) {  // ties keep the lower index (o < i)
        s.own[p] = i;
      }
    } else {
      s.pix[i] = -1;
    }
  }
  Counts c;
  c.inter = ni;
  c.uni = nx + ny - ni;
  return c;
}

void Clear(Scratch& s, int n, int m) {
  for (int i = 0; i < n; ++i)
    if (s.pix[i] >= 0) s.own[s.pix[i]] = -1;
  for (int j = 0; j < m; ++j)
    if (s.gpix[j] >= 0) s.gown[s.gpix[j]] = -1;
}

inline float LossOf(const Counts& c) {
  if (c.uni == 0) return 0.0f;
  return 1.0f - static_cast<float>(c.inter) / static_cast<float>(c.uni);
}

// Gradient of one batch element (maps already drawn). g[2 * i + k] is overwritten.
void Backward(const Scratch& s, const Counts& c, float grad_loss, int n, int m, float scale, int hs, int ws,
              float* g) {
  for (int i = 0; i < 2 * n; ++i) g[i] = 0.0f;
  if (c.uni == 0 || grad_loss == 0.0f) return;
  const float uf = static_cast<float>(c.uni);
  const float inter = static_cast<float>(c.inter);
  // Coefficients of the unit direction vectors, in dL/d(camera pixel) units.
  const float coef_missing = grad_loss * (1.0f / uf) * scale / kTent;           // |dL/dX| = 1/U
  const float coef_extra = grad_loss * (inter / (uf * uf)) * scale / kTent;     // dL/dX = I/U^2

  // Extra pixels (pred on, gt off): their owner moves toward the nearest gt pixel of the window, or (no gt pixel
  // in the window) away from the pixel centre.
  if (c.inter > 0) {
    for (int i = 0; i < n; ++i) {
      const int p = s.pix[i];
      if (p < 0 || s.own[p] != i || s.gown[p] >= 0) continue;
      const int row = p / ws, col = p - row * ws;
      int best = -1, best_d2 = 1 << 30;
      for (int dr = -kRadius; dr <= kRadius; ++dr) {
        const int r = row + dr;
        if (r < 0 || r >= hs) continue;
        for (int dc = -kRadius; dc <= kRadius; ++dc) {
          const int cc = col + dc;
          if (cc < 0 || cc >= ws) continue;
          const int q = r * ws + cc;
          if (s.gown[q] < 0) continue;
          const int dd = dr * dr + dc * dc;
          if (dd < best_d2) {
            best_d2 = dd;
            best = q;
          }
        }
      }
      if (best >= 0) {  // pulled toward the gt pixel `best`
        const int br = best / ws, bc = best - br * ws;
        const float vx = s.us[i] - static_cast<float>(bc);
        const float vy = s.vs[i] - static_cast<float>(br);
        const float d = std::sqrt(vx * vx + vy * vy);
        g[2 * i] += coef_extra * vx / d;
        g[2 * i + 1] += coef_extra * vy / d;
      } else {  // pushed away from its own pixel centre
        const float vx = s.us[i] - static_cast<float>(col);
        const float vy = s.vs[i] - static_cast<float>(row);
        const float d = std::sqrt(vx * vx + vy * vy);
        if (d > 0.0f) {
          g[2 * i] -= coef_extra * vx / d;
          g[2 * i + 1] -= coef_extra * vy / d;
        }
      }
    }
  }

  // Missing pixels (gt on, pred off): the owner, among the owners of the drawn pixels of the window, nearest to the
  // pixel centre (ties: lowest index) is pulled toward it.
  for (int j = 0; j < m; ++j) {
    const int p = s.gpix[j];
    if (p < 0 || s.gown[p] != j || s.own[p] >= 0) continue;
    const int row = p / ws, col = p - row * ws;
    const float fr = static_cast<float>(row), fc = static_cast<float>(col);
    int best = -1;
    float best_d2 = 0.0f;
    for (int dr = -kRadius; dr <= kRadius; ++dr) {
      const int r = row + dr;
      if (r < 0 || r >= hs) continue;
      for (int dc = -kRadius; dc <= kRadius; ++dc) {
        const int cc = col + dc;
        if (cc < 0 || cc >= ws) continue;
        const int k = s.own[r * ws + cc];
        if (k < 0) continue;
        const float vx = s.us[k] - fc;
        const float vy = s.vs[k] - fr;
        const float vxx = vx * vx;
        const float vyy = vy * vy;
        const float d2 = vxx + vyy;
        if (best < 0 || d2 < best_d2 || (d2 == best_d2 && k < best)) {
          best = k;
          best_d2 = d2;
        }
      }
    }
    if (best >= 0) {
      const float vx = s.us[best] - fc;
      const float vy = s.vs[best] - fr;
      const float d = std::sqrt(best_d2);
      g[2 * best] += coef_missing * vx / d;
      g[2 * best + 1] += coef_missing * vy / d;
    }
  }
}

bool ValidSizes(const void* a, const void* b, int batch, int n, int m, int begin, int end) {
  return a != nullptr && b != nullptr && batch >= 0 && n > 0 && m > 0 && begin >= 0 && begin <= end &&
         end <= batch;
}

}  // namespace

extern "C" {

const char* pl_error_string(int code) {
  switch (code) {
    case PL_OK: return "ok";
    case PL_ERR_INVALID_ARGUMENT: return "invalid argument (sizes, height/width/scale must be > 0, null pointer)";
    case PL_ERR_IMAGE_TOO_LARGE: return "drawn image too large (round(height*scale)*round(width*scale) > 2^24)";
    case PL_ERR_CUDA: return "CUDA error";
    case PL_ERR_NO_CUDA: return "library built without CUDA or no CUDA device";
    case PL_ERR_WORKSPACE: return "workspace too small";
    default: return "unknown error";
  }
}

int pl_drawn_size(int height, int width, float scale, int* drawn_height, int* drawn_width) {
  if (!(height > 0 && width > 0 && scale > 0.0f && std::isfinite(scale))) return PL_ERR_INVALID_ARGUMENT;
  const double h = std::floor(static_cast<double>(height) * static_cast<double>(scale) + 0.5);
  const double w = std::floor(static_cast<double>(width) * static_cast<double>(scale) + 0.5);
  if (h < 1.0 || w < 1.0) return PL_ERR_INVALID_ARGUMENT;
  if (h * w > static_cast<double>(PL_MAX_DRAWN_PIXELS)) return PL_ERR_IMAGE_TOO_LARGE;
  if (drawn_height) *drawn_height = static_cast<int>(h);
  if (drawn_width) *drawn_width = static_cast<int>(w);
  return PL_OK;
}

int pl_cpu_forward(const float* pred, const float* gt, int batch, int n_pred, int n_gt, int height, int width,
                   float scale, float* loss, int batch_begin, int batch_end) {
  if (!ValidSizes(pred, gt, batch, n_pred, n_gt, batch_begin, batch_end) || loss == nullptr)
    return PL_ERR_INVALID_ARGUMENT;
  int hs, ws;
  const int rc = pl_drawn_size(height, width, scale, &hs, &ws);
  if (rc != PL_OK) return rc;
  Scratch& s = tls_scratch;
  s.Prepare(static_cast<int64_t>(hs) * ws, n_pred, n_gt);
  for (int b = batch_begin; b < batch_end; ++b) {
    const Counts c = Draw(s, pred + static_cast<int64_t>(b) * n_pred * 2, gt + static_cast<int64_t>(b) * n_gt * 2,
                          n_pred, n_gt, scale, hs, ws);
    loss[b] = LossOf(c);
    Clear(s, n_pred, n_gt);
  }
  return PL_OK;
}

int pl_cpu_backward(const float* pred, const float* gt, const float* grad_loss, int batch, int n_pred, int n_gt,
                    int height, int width, float scale, float* grad_pred, int batch_begin, int batch_end) {
  if (!ValidSizes(pred, gt, batch, n_pred, n_gt, batch_begin, batch_end) || grad_loss == nullptr ||
      grad_pred == nullptr)
    return PL_ERR_INVALID_ARGUMENT;
  int hs, ws;
  const int rc = pl_drawn_size(height, width, scale, &hs, &ws);
  if (rc != PL_OK) return rc;
  Scratch& s = tls_scratch;
  s.Prepare(static_cast<int64_t>(hs) * ws, n_pred, n_gt);
  for (int b = batch_begin; b < batch_end; ++b) {
    const Counts c = Draw(s, pred + static_cast<int64_t>(b) * n_pred * 2, gt + static_cast<int64_t>(b) * n_gt * 2,
                          n_pred, n_gt, scale, hs, ws);
    Backward(s, c, grad_loss[b], n_pred, n_gt, scale, hs, ws, grad_pred + static_cast<int64_t>(b) * n_pred * 2);
    Clear(s, n_pred, n_gt);
  }
  return PL_OK;
}

#ifndef PL_WITH_CUDA
int pl_cuda_available(void) { return 0; }
size_t pl_cuda_workspace_bytes(int, int, int, float) { return 0; }
int pl_cuda_forward(const float*, const float*, int, int, int, int, int, float, float*, void*, size_t, void*) {
  return PL_ERR_NO_CUDA;
}
int pl_cuda_backward(const float*, const float*, const float*, int, int, int, int, int, float, float*, void*, size_t,
                     void*) {
  return PL_ERR_NO_CUDA;
}
#endif

}  // extern "C"
