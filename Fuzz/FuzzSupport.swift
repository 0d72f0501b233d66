// Shared by every fuzz entry (scripts/fuzz.sh compiles it into each target's module).

#if canImport(Glibc)
import Glibc
#endif

/// A violated invariant: says which on stderr (an -O precondition drops its message), then traps.
func check(_ ok: @autoclosure () -> Bool, _ what: @autoclosure () -> String = "invariant") {
    if !ok() { fail(what()) }
}

func fail(_ what: String) -> Never {
    fputs("fuzz check failed: \(what)\n", stderr)
    abort()
}

/// Fuzz bytes as text, invalid UTF-8 repaired as the daemon's readers do.
func text(_ bytes: ArraySlice<UInt8>) -> String { String(decoding: bytes, as: UTF8.self) }

/// The body of LLVMFuzzerTestOneInput: the first byte picks one of `parts`, which gets the rest.
func dispatch(_ data: UnsafePointer<UInt8>, _ size: Int, _ parts: [(ArraySlice<UInt8>) -> Void]) -> Int32 {
    guard size > 0 else { return 0 }
    let bytes = Array(UnsafeBufferPointer(start: data, count: size))
    parts[Int(bytes[0]) % parts.count](bytes.dropFirst())
    return 0
}
