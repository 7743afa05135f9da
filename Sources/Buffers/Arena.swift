// Buffers: page-aligned arenas allocated once (at mount or at director start) and carved into fixed-size slices.
// Data moves through the array as slices of arenas; nothing on the I/O path allocates.
import SysPosix

/// A page-aligned region of `sliceCount` slices of `sliceBytes` each. Lives until the process ends or `release()`.
public final class Arena: @unchecked Sendable {
    public let base: UnsafeMutableRawPointer
    public let sliceBytes: Int
    public let sliceCount: Int
    public var totalBytes: Int { sliceBytes * sliceCount }

    public init(sliceBytes: Int, sliceCount: Int) {
        precondition(sliceBytes > 0 && sliceBytes % 4096 == 0, "arena slices are whole pages")
        precondition(sliceCount > 0)
        self.sliceBytes = sliceBytes
        self.sliceCount = sliceCount
        self.base = Posix.allocateAligned(bytes: sliceBytes * sliceCount)
    }

    deinit { Posix.free(base) }

    @inline(__always)
    public func slice(_ index: Int) -> UnsafeMutableRawPointer {
        precondition(index >= 0 && index < sliceCount, "arena slice \(index) out of range")
        return base + index * sliceBytes
    }
}

/// One aligned buffer (a single-slice arena), for the control plane and staging.
public func alignedBuffer(bytes: Int) -> Arena { Arena(sliceBytes: (bytes + 4095) & ~4095, sliceCount: 1) }
