// The op's output memory: a small best-fit cache of already-touched blocks (CTPO_EXT_POOL_MB).
// Included by csrc/ctpo.cpp (one translation unit), after its CPU_CAPABILITY setup (CTPO_HAVE_AVX512).
#pragma once

namespace ctpo {

// ---------------------------------------------------------------------------------------------
// Output memory. A fresh (B, T) tensor from the default CPU allocator is fresh pages more often than not
// (glibc returns large blocks to the OS on free), and first-touch page faults plus the kernel's zeroing
// cost about 0.15 ns/byte here: as much as the whole fused kernel. The op's outputs (loss, log_w, bits,
// grad) therefore come from a small best-fit cache of blocks that were already faulted in. The tensors
// are ordinary (resizable) tensors; a freed block returns to the cache, up to CTPO_EXT_POOL_MB
// (default 256; 0 turns the cache off), beyond which it goes back to the system.

class PooledCPUAllocator final : public c10::Allocator {
 public:
  static PooledCPUAllocator& get() {
    static auto* instance = new PooledCPUAllocator();  // leaked on purpose: tensors may outlive static destruction
    return *instance;
  }
  bool enabled() const { return cap_ > 0; }
  c10::DataPtr allocate(size_t n) override {
    const size_t total = round_up(n + kHeader);
    char* base = static_cast<char*>(take(total));
    if (base == nullptr) {
      base = static_cast<char*>(c10::alloc_cpu(total));
      *reinterpret_cast<size_t*>(base) = total;
    }
    return {base + kHeader, base, &PooledCPUAllocator::release, c10::Device(c10::DeviceType::CPU)};
  }
  void copy_data(void* dest, const void* src, std::size_t count) const override { default_copy_data(dest, src, count); }
  size_t cached_bytes() {
    std::lock_guard<std::mutex> g(mu_);
    return cached_;
  }
  void clear() {
    std::lock_guard<std::mutex> g(mu_);
    for (auto& [size, base] : free_) c10::free_cpu(base);
    free_.clear();
    cached_ = 0;
  }

 private:
  static constexpr size_t kHeader = 64;  // keeps the 64-byte alignment of c10::alloc_cpu; holds the block size
  static size_t round_up(size_t n) { return (n + 4095) / 4096 * 4096; }
  PooledCPUAllocator() {
    const char* env = std::getenv("CTPO_EXT_POOL_MB");
    cap_ = (env != nullptr ? static_cast<size_t>(std::max(0L, std::atol(env))) : size_t{256}) << 20;
  }
  void* take(size_t total) {  // best fit among cached blocks no more than twice the size
    std::lock_guard<std::mutex> g(mu_);
    auto it = free_.lower_bound(total);
    if (it == free_.end() || it->first > 2 * total) return nullptr;
    void* base = it->second;
    cached_ -= it->first;
    free_.erase(it);
    return base;
  }
  static void release(void* base) { get().give_back(base); }
  void give_back(void* base) {
    const size_t total = *static_cast<size_t*>(base);
    {
      std::lock_guard<std::mutex> g(mu_);
      if (cached_ + total <= cap_) {
        free_.emplace(total, base);
        cached_ += total;
        return;
      }
    }
    c10::free_cpu(base);
  }
  std::mutex mu_;
  std::multimap<size_t, void*> free_;
  size_t cached_ = 0;
  size_t cap_ = 0;
};

static at::Tensor new_output(at::IntArrayRef sizes, at::ScalarType dtype) {
  auto& pool = PooledCPUAllocator::get();
  if (!pool.enabled()) return at::empty(sizes, at::TensorOptions().dtype(dtype).device(at::kCPU));
  return at::detail::empty_generic(sizes, &pool, c10::DispatchKeySet(c10::DispatchKey::CPU), dtype, std::nullopt);
}

}  // namespace ctpo
