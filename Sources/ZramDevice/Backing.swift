import Glibc
import Posix
import Synchronization

/// zram's backing device (`backing_dev`): the block file written-back pages live in, its
/// allocation bitmap (one bit per 4 KiB block) and a reference count per block (2 bytes: the
/// slots stored in it, more than one when objects are packed), together 2.03 bytes per 4 KiB,
/// 520 KiB per GiB of backing store, reserved and committed only where blocks were used; and
/// the working memory of a writeback run, allocated here, at setup, so a writeback under memory
/// pressure allocates nothing but the pages its candidate list touches.
///
/// A written-back slot's handle is `block << 12 | offset`: the block, and where its object
/// starts in it (0 unless packed).
final class Backing: @unchecked Sendable {   // @unchecked: the bitmap is atomics; run state is used under ZramDevice's run lock
    let file: BlockFile
    var blockCount: Int { file.blockCount }
    private let bitmap: UnsafeMutablePointer<Atomic<UInt64>>
    private let bitmapBytes: Int
    private let refs: UnsafeMutablePointer<Atomic<UInt16>>
    private let refBytes: Int
    /// bd_count lives here: a block counts from its reservation to its release, as in zram.
    private let counters: ZramCounters
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

    init(file: BlockFile, pageCount: Int, counters: ZramCounters) throws(ZramError) {
        self.file = file
        self.counters = counters
        bitmapBytes = max(8, (file.blockCount + 63) / 64 * 8)
        refBytes = max(2, file.blockCount * 2)
        candidateBytes = max(4, pageCount * 4)
        do {
            bitmap = try VirtualMemory.reserve(byteCount: bitmapBytes).bindMemory(to: Atomic<UInt64>.self, capacity: bitmapBytes / 8)
        } catch {
            throw .outOfMemory("cannot map the backing device's bitmap (\(bitmapBytes) bytes): \(error)")
        }
        do {
            refs = try VirtualMemory.reserve(byteCount: refBytes).bindMemory(to: Atomic<UInt16>.self, capacity: refBytes / 2)
        } catch {
            VirtualMemory.unmap(UnsafeMutableRawPointer(bitmap), byteCount: bitmapBytes)
            throw .outOfMemory("cannot map the backing device's block counts (\(refBytes) bytes): \(error)")
        }
        do {
            candidates = try VirtualMemory.reserve(byteCount: candidateBytes).bindMemory(to: UInt32.self, capacity: candidateBytes / 4)
        } catch {
            VirtualMemory.unmap(UnsafeMutableRawPointer(bitmap), byteCount: bitmapBytes)
            VirtualMemory.unmap(UnsafeMutableRawPointer(refs), byteCount: refBytes)
            throw .outOfMemory("cannot map the writeback candidate list (\(candidateBytes) bytes): \(error)")
        }
        var raw: UnsafeMutableRawPointer?
        guard posix_memalign(&raw, pageSize, Self.maxBatch * pageSize) == 0, let mem = raw else {
            VirtualMemory.unmap(UnsafeMutableRawPointer(bitmap), byteCount: bitmapBytes)
            VirtualMemory.unmap(UnsafeMutableRawPointer(refs), byteCount: refBytes)
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
        VirtualMemory.unmap(UnsafeMutableRawPointer(refs), byteCount: refBytes)
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
                    counters.add(.bdCount)
                    return block
                }
                free &= free - 1
            }
        }
        return nil
    }

    /// Gives a reserved block back (a run that did not use it, or its last slot's release).
    func releaseBlock(_ block: Int) {
        guard block >= 0, block < blockCount else { return }
        bitmap[block / 64].bitwiseAnd(~(1 << UInt64(block % 64)), ordering: .acquiringAndReleasing)
        counters.subtract(.bdCount)
    }

    /// A written block's first reference: the run's own, held while its slots switch over.
    func hold(_ block: Int) { refs[block].store(1, ordering: .releasing) }

    /// One more slot stored in `block` (its slot lock held, the run's hold in place).
    func retain(_ block: Int) { refs[block].add(1, ordering: .acquiringAndReleasing) }

    /// One reference fewer (any thread: a free, an overwrite or a discard of a written-back
    /// page, or the run letting go); the last one releases the block.
    func release(_ block: Int) {
        guard block >= 0, block < blockCount else { return }
        if refs[block].subtract(1, ordering: .acquiringAndReleasing).oldValue == 1 { releaseBlock(block) }
    }

    /// A successor rebuilding the bitmap from the slots: one more slot stored in `block`, which
    /// is in use from its first one. False for a block outside the file. bd_count is the
    /// caller's (it comes with the state, or is recounted).
    func adoptReference(_ block: Int) -> Bool {
        guard block >= 0, block < blockCount else { return false }
        if refs[block].add(1, ordering: .relaxed).oldValue == 0 {
            bitmap[block / 64].bitwiseOr(1 << UInt64(block % 64), ordering: .relaxed)
        }
        return true
    }

    /// Every block free again (reset; no I/O runs).
    func releaseAll() {
        releaseToOS(UnsafeMutableRawPointer(bitmap), byteCount: bitmapBytes)
        releaseToOS(UnsafeMutableRawPointer(refs), byteCount: refBytes)
        searchFrom = 0
    }

    /// Blocks reserved now (a census: what bd_count should be).
    func blocksInUse() -> Int {
        var n = 0
        for w in 0..<(bitmapBytes / 8) { n += bitmap[w].load(ordering: .relaxed).nonzeroBitCount }
        return n
    }

    static func handle(block: Int, offset: Int) -> UInt64 { UInt64(block) << 12 | UInt64(offset) }
    static func location(_ handle: UInt64) -> (block: Int, offset: Int) {
        (Int(truncatingIfNeeded: handle >> 12), Int(handle & 4095))
    }

    /// A run is over: the candidate list's pages go back to the OS.
    func releaseCandidates(count: Int) {
        let bytes = min(candidateBytes, (count * 4 + pageSize - 1) / pageSize * pageSize)
        if bytes > 0 { releaseToOS(UnsafeMutableRawPointer(candidates), byteCount: bytes) }
    }

    /// The buffer of batch entry `i`.
    @inline(__always) func page(_ i: Int) -> UnsafeMutableRawPointer { pages + i * pageSize }
}
