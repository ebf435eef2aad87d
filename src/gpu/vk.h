// The Vulkan layer under the GPU backend: the loader opened at run time (a machine without libvulkan.so.1 still
// runs moep on its CPU, and gets a clear error only when it asks for the GPU), one device and queue, device
// memory handed out from a few large allocations, compute pipelines from the SPIR-V compiled into the binary,
// and command buffers recorded once and replayed.
//
// Shaders reach every buffer through its device address (Vulkan 1.2's buffer device address): a dispatch takes
// its buffers and sizes as push constants, so that no descriptor set exists at all, and a tensor may sit
// anywhere in any of the allocations (NVIDIA's driver caps one allocation at about 4 GiB; lavapipe caps a bound
// storage buffer at 128 MiB, which device addresses do not have).
#pragma once

#define VK_NO_PROTOTYPES
#include <vulkan/vulkan.h>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace moep::gpu {

// One Vulkan physical device, as `moep devices` and the error messages name it.
struct DeviceInfo {
  int index = 0;
  std::string name;
  std::string type;    // "discrete GPU", "integrated GPU", "virtual GPU", "CPU (software)", "other"
  std::string driver;  // driver name and version
  uint32_t vendor_id = 0;
  uint64_t device_local_bytes = 0;  // the largest device-local heap
  bool software = false;            // a CPU implementation (lavapipe): correct, but slower than moep's CPU path
  bool usable = false;              // Vulkan 1.2+ with buffer device address, compute queue
  std::string why_unusable;
};

// Every Vulkan device the loader sees. Throws moep::Error when there is no loader or no instance can be made.
std::vector<DeviceInfo> list_devices();

// A range of device memory: where a tensor or buffer lives.
struct DeviceSpan {
  VkBuffer buffer = VK_NULL_HANDLE;
  VkDeviceSize offset = 0;
  VkDeviceSize bytes = 0;
  VkDeviceAddress address = 0;  // of the first byte
  uint8_t* host = nullptr;      // mapped pointer when the memory is host-visible
};

class Context {
 public:
  // Opens device `index` of list_devices(). Throws moep::Error naming the device and what it lacks.
  explicit Context(int index);
  ~Context();
  Context(const Context&) = delete;
  Context& operator=(const Context&) = delete;

  const DeviceInfo& info() const { return info_; }
  VkDevice device() const { return device_; }

  // Device-local memory (the weights, activations, KV cache), 256-byte aligned, from blocks of up to
  // kBlockBytes. Never freed before the context. Throws moep::Error when the device has no room, saying how
  // much was asked for and how much is already taken.
  DeviceSpan alloc_device(VkDeviceSize bytes);
  // Host-visible, coherent memory the device reads and writes directly (step inputs, logits, the all-reduce).
  DeviceSpan alloc_host(VkDeviceSize bytes);
  uint64_t device_bytes_allocated() const { return device_used_; }

  // Copies bytes from the host into device memory through a staging buffer (blocking; for loading).
  void upload(const DeviceSpan& dst, VkDeviceSize dst_offset, const void* src, VkDeviceSize bytes);
  // A staging area the caller fills, then flush_staging copies it to dst (blocking). For converting loads.
  uint8_t* staging(VkDeviceSize* capacity);
  void flush_staging(const DeviceSpan& dst, VkDeviceSize dst_offset, VkDeviceSize bytes);

  // A compute pipeline from SPIR-V words; every pipeline shares one layout of kPushBytes of push constants.
  VkPipeline pipeline(const uint32_t* spirv, size_t words, const char* name);
  VkPipelineLayout layout() const { return layout_; }

  // Command buffers from one pool, reset and re-recorded only by their owner.
  VkCommandBuffer new_command_buffer();
  // Submits cb and waits for it (one fence, reused).
  void submit_and_wait(VkCommandBuffer cb);

  // Timestamps: a query pool of n entries; ns per tick.
  VkQueryPool query_pool(uint32_t n);
  double timestamp_period_ns() const { return ts_period_; }
  bool has_timestamps() const { return ts_valid_; }

  // Device objects made so far (memory blocks, pipelines, command buffers, query pools): the steady-state test
  // requires that decoding makes none.
  uint64_t objects_created() const { return objects_; }

  static constexpr uint32_t kPushBytes = 128;
  static constexpr VkDeviceSize kBlockBytes = VkDeviceSize(1) << 30;

 private:
  struct Block {
    VkBuffer buffer = VK_NULL_HANDLE;
    VkDeviceMemory memory = VK_NULL_HANDLE;
    VkDeviceSize size = 0, used = 0;
    VkDeviceAddress address = 0;
    uint8_t* host = nullptr;
  };
  DeviceSpan alloc_in(std::vector<Block>& blocks, VkDeviceSize bytes, bool host);
  Block new_block(VkDeviceSize bytes, bool host);

  DeviceInfo info_;
  VkInstance instance_ = VK_NULL_HANDLE;
  VkPhysicalDevice phys_ = VK_NULL_HANDLE;
  VkDevice device_ = VK_NULL_HANDLE;
  VkQueue queue_ = VK_NULL_HANDLE;
  uint32_t queue_family_ = 0;
  VkCommandPool pool_ = VK_NULL_HANDLE;
  VkFence fence_ = VK_NULL_HANDLE;
  VkPipelineLayout layout_ = VK_NULL_HANDLE;
  std::vector<VkPipeline> pipelines_;
  std::vector<VkQueryPool> query_pools_;
  std::vector<Block> device_blocks_, host_blocks_;
  uint32_t device_type_ = 0, host_type_ = 0;
  uint64_t device_used_ = 0;
  Block staging_;
  VkCommandBuffer upload_cb_ = VK_NULL_HANDLE;
  double ts_period_ = 1.0;
  bool ts_valid_ = false;
  uint64_t objects_ = 0;
  VkDeviceSize max_alloc_ = ~VkDeviceSize(0);  // maxMemoryAllocationSize
};

// The loader's functions this backend calls (filled when the first Context or list_devices opens the loader).
struct Api {
#define MOEP_VK_FNS(X)                                                                                          \
  X(vkCreateInstance) X(vkDestroyInstance) X(vkEnumeratePhysicalDevices) X(vkGetPhysicalDeviceProperties)      \
  X(vkGetPhysicalDeviceProperties2) X(vkGetPhysicalDeviceFeatures2) X(vkGetPhysicalDeviceMemoryProperties)      \
  X(vkGetPhysicalDeviceQueueFamilyProperties) X(vkCreateDevice) X(vkDestroyDevice) X(vkGetDeviceQueue)         \
  X(vkCreateBuffer) X(vkDestroyBuffer) X(vkGetBufferMemoryRequirements) X(vkAllocateMemory) X(vkFreeMemory)     \
  X(vkBindBufferMemory) X(vkMapMemory) X(vkGetBufferDeviceAddress) X(vkCreateShaderModule)                      \
  X(vkDestroyShaderModule) X(vkCreatePipelineLayout) X(vkDestroyPipelineLayout) X(vkCreateComputePipelines)     \
  X(vkDestroyPipeline) X(vkCreateCommandPool) X(vkDestroyCommandPool) X(vkAllocateCommandBuffers)               \
  X(vkBeginCommandBuffer) X(vkEndCommandBuffer) X(vkCmdBindPipeline) X(vkCmdPushConstants) X(vkCmdDispatch)     \
  X(vkCmdPipelineBarrier) X(vkCmdCopyBuffer) X(vkCmdFillBuffer) X(vkCmdWriteTimestamp) X(vkCmdResetQueryPool)   \
  X(vkCreateQueryPool) X(vkDestroyQueryPool) X(vkGetQueryPoolResults) X(vkQueueSubmit) X(vkQueueWaitIdle)      \
  X(vkCreateFence) X(vkDestroyFence) X(vkGetFenceStatus) X(vkWaitForFences) X(vkResetFences) X(vkDeviceWaitIdle)
#define MOEP_VK_DECLARE(f) PFN_##f f = nullptr;
  MOEP_VK_FNS(MOEP_VK_DECLARE)
#undef MOEP_VK_DECLARE
};
const Api& api();

// Marks this thread as inside a driver call for its lifetime (see gpu::inside_driver_call).
struct DriverCall {
  DriverCall();
  ~DriverCall();
};

bool driver_call_active();

// Throws moep::Error naming the call and Vulkan's result when r is not VK_SUCCESS.
void check(VkResult r, const char* what);

}  // namespace moep::gpu
