import Glibc
import Posix
import Synchronization

/// zram's backing device (`backing_dev`): the block file written-back pages live in, its
/// allocation bitmap (one bit per 4 KiB block: 32 KiB of memory per GiB of backing store, reserved
/// and committed only where blocks were used), and the working memory of a writeback run, all
/// allocated here, at setup, so a writeback under memory pressure allocates nothing.
final class Backing: @unchecked Sendable {   // @unchecked: the bitmap is atomics; run state is used under ZramDevice's run lock
    let file: BlockFile
    var blockCount: Int { file.blockCount }
    private let bitmap: UnsafeMutablePointer<Atomic<UInt64>>
    private let bitmapBytes: Int
    /// Next-fit search start. Only a writeback run reserves blocks, and runs are serialized.
    private var searchFrom = 0

    /// A run's candidates (page numbers, grouped by size bucket), 4 bytes per page of the device.
    let candidates: UnsafeMutablePointer<UInt32>
    private let candidateBytes: Int
    /// Pages written in one batch at most: writeback_batch_size beyond it changes nothing here,
    /// because a batch is written with one system call per run of consecutive blocks.
    static let maxBatch = 256
    /// `maxBatch` aligned pages (O_DIRECT) and their iovecs.
    let pages: UnsafeMutableRawPointer
    let iovecs: UnsafeMutablePointer<iovec>

    init(file: BlockFile, pageCount: Int) throws(ZramError) {
        self.file = file
        bitmapBytes = max(8, (file.blockCount + 63) / 64 * 8)
        candidateBytes = max(4, pageCount * 4)
        do {
            bitmap = try VirtualMemory.reserve(byteCount: bitmapBytes).bindMemory(to: Atomic<UInt64>.self, capacity: bitmapBytes / 8)
        } catch {
            throw .outOfMemory("cannot map the backing device's bitmap (\(bitmapBytes) bytes): \(error)")
        }
        do {
            candidates = try VirtualMemory.reserve(byteCount: candidateBytes).bindMemory(to: UInt32.self, capacity: candidateBytes / 4)
        } catch {
            VirtualMemory.unmap(UnsafeMutableRawPointer(bitmap), byteCount: bitmapBytes)
            throw .outOfMemory("cannot map the writeback candidate list (\(candidateBytes) bytes): \(error)")
        }
        var raw: UnsafeMutableRawPointer?
        guard posix_memalign(&raw, pageSize, Self.maxBatch * pageSize) == 0, let mem = raw else {
            VirtualMemory.unmap(UnsafeMutableRawPointer(bitmap), byteCount: bitmapBytes)
            VirtualMemory.unmap(UnsafeMutableRawPointer(candidates), byteCount: candidateBytes)
            throw .outOfMemory("cannot allocate the writeback buffers (\(Self.maxBatch * pageSize) bytes)")
        }
        pages = mem
        iovecs = .allocate(capacity: Self.maxBatch)
        // Touched now, so the first writeback under pressure does not fault them in.
        mem.initializeMemory(as: UInt8.self, repeating: 0, count: Self.maxBatch * pageSize)
    }

    deinit {
        file.close(removing: true)
        VirtualMemory.unmap(UnsafeMutableRawPointer(bitmap), byteCount: bitmapBytes)
        VirtualMemory.unmap(UnsafeMutableRawPointer(candidates), byteCount: candidateBytes)
        free(pages)
        iovecs.deallocate()
    }

    /// A free block, now taken; nil when the backing device is full (zram: -ENOSPC). Run lock held.
    func reserveBlock() -> Int? {
        let words = bitmapBytes / 8
        for step in 0..<(words + 1) {
            let w = (searchFrom / 64 + step) % words
            let bits = bitmap[w].load(ordering: .relaxed)
            guard bits != ~0 else { continue }
            var free = ~bits
            while free != 0 {
                let bit = free.trailingZeroBitCount
                let block = w * 64 + bit
                guard block < blockCount else { break }
                // Only a run sets bits (frees clear them), so a bit seen clear is still clear here.
                let before = bitmap[w].bitwiseOr(1 << UInt64(bit), ordering: .acquiringAndReleasing).oldValue
                if before & (1 << UInt64(bit)) == 0 {
                    searchFrom = block + 1 < blockCount ? block + 1 : 0
                    return block
                }
                free &= free - 1
            }
        }
        return nil
    }

    /// Gives a block back (any thread: a free, an overwrite or a discard of a written-back page).
    func releaseBlock(_ block: Int) {
        guard block >= 0, block < blockCount else { return }
        bitmap[block / 64].bitwiseAnd(~(1 << UInt64(block % 64)), ordering: .acquiringAndReleasing)
    }

    /// Every block free again (reset; no I/O runs).
    func releaseAll() {
        releaseToOS(UnsafeMutableRawPointer(bitmap), byteCount: bitmapBytes)
        searchFrom = 0
    }

    /// A run is over: the candidate list's pages go back to the OS.
    func releaseCandidates(count: Int) {
        let bytes = min(candidateBytes, (count * 4 + pageSize - 1) / pageSize * pageSize)
        if bytes > 0 { releaseToOS(UnsafeMutableRawPointer(candidates), byteCount: bytes) }
    }

    /// The buffer of batch entry `i`.
    @inline(__always) func page(_ i: Int) -> UnsafeMutableRawPointer { pages + i * pageSize }
}
