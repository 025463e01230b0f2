// Host build of the CUDA kernels' float32 Box-Muller (csrc/include/ddpm_fast/box_muller_math.h,
// philox.h) for tests/test_box_muller_math.py: reads binary float32 / uint32 values on stdin,
// writes float32 results on stdout.
//   box_muller_host log      u[n]        -> log_unit(u)[n]
//   box_muller_host sincos   theta[n]    -> (cos, sin)[n]
//   box_muller_host normals  words[4 n]  -> normals4(words)[4 n]
#include <cstdio>
#include <cstring>
#include <vector>

#include "ddpm_fast/philox.h"

template <class T>
static std::vector<T> read_all() {
  std::vector<T> v;
  T x;
  while (std::fread(&x, sizeof x, 1, stdin) == 1) v.push_back(x);
  return v;
}

int main(int argc, char** argv) {
  if (argc != 2) return 2;
  std::vector<float> out;
  if (std::strcmp(argv[1], "log") == 0) {
    for (float u : read_all<float>()) out.push_back(ddpm_fast::log_unit(u));
  } else if (std::strcmp(argv[1], "sincos") == 0) {
    for (float th : read_all<float>()) {
      float c, s;
      ddpm_fast::sincos_0_2pi(th, c, s);
      out.push_back(c);
      out.push_back(s);
    }
  } else if (std::strcmp(argv[1], "normals") == 0) {
    const std::vector<uint32_t> w = read_all<uint32_t>();
    for (size_t i = 0; i + 4 <= w.size(); i += 4) {
      float z[4];
      ddpm_fast::normals4(ddpm_fast::Philox4{{w[i], w[i + 1], w[i + 2], w[i + 3]}}, z);
      out.insert(out.end(), z, z + 4);
    }
  } else {
    return 2;
  }
  return std::fwrite(out.data(), sizeof(float), out.size(), stdout) == out.size() ? 0 : 1;
}
