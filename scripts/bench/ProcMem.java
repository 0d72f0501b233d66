// A Java program that holds realistic data in memory, for the process-memory corpus.
//
// Usage: java ProcMem.java TARGET_RSS_BYTES   (single-file source launch, JDK 11+)
// Builds objects, maps, strings and arrays out of real text on this machine until its
// resident set reaches the target, prints "ready" and waits for stdin to close. corpus.py
// then dumps its private memory: the pages swap would see (the JVM heap among them).
import java.io.IOException;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import java.util.Random;
import java.util.regex.Matcher;
import java.util.regex.Pattern;
import java.util.stream.Stream;

public class ProcMem {
    record Order(long id, String customer, String product, int quantity, double price,
                 String status, String createdAt, List<String> tags) {}

    static long rss() throws IOException {
        String[] f = Files.readString(Path.of("/proc/self/statm")).trim().split(" ");
        return Long.parseLong(f[1]) * 4096;
    }

    // Words of real text: the JDK's own legal notices and C headers on this machine.
    static List<String> words(int limit) throws IOException {
        List<String> out = new ArrayList<>();
        Pattern word = Pattern.compile("[A-Za-z_][A-Za-z0-9_]{2,}");
        for (String root : new String[] {"/usr/include", "/usr/share/doc"}) {
            try (Stream<Path> s = Files.walk(Path.of(root))) {
                for (Path p : (Iterable<Path>) s.filter(Files::isRegularFile).sorted()::iterator) {
                    String name = p.toString();
                    if (!(name.endsWith(".h") || name.endsWith("copyright"))) continue;
                    String text;
                    try { text = Files.readString(p, StandardCharsets.ISO_8859_1); } catch (IOException e) { continue; }
                    Matcher m = word.matcher(text);
                    while (m.find()) out.add(m.group());
                    if (out.size() >= limit) return out;
                }
            }
        }
        return out;
    }

    public static void main(String[] args) throws IOException {
        long target = Long.parseLong(args[0]);
        Random rng = new Random(6);
        List<String> words = words(300_000);
        String[] statuses = {"new", "paid", "shipped", "delivered", "returned"};
        List<Order> orders = new ArrayList<>();                    // row objects, like an ORM cache
        Map<String, List<Long>> byCustomer = new HashMap<>();      // an index
        Map<String, Integer> counts = new HashMap<>();             // word frequencies
        List<double[]> samples = new ArrayList<>();                // numeric series
        StringBuilder journal = new StringBuilder();               // text log
        long n = 0;
        while (rss() < target) {
            for (int i = 0; i < 5000; i++, n++) {
                String customer = words.get(rng.nextInt(words.size())) + " " + words.get(rng.nextInt(words.size()));
                List<String> tags = List.of(words.get(rng.nextInt(2000)), words.get(rng.nextInt(2000)));
                Order o = new Order(n, customer, words.get(rng.nextInt(words.size())), 1 + rng.nextInt(9),
                        Math.round(rng.nextDouble() * 100000) / 100.0, statuses[rng.nextInt(statuses.length)],
                        String.format("2024-%02d-%02dT%02d:%02d:00Z", 1 + rng.nextInt(12), 1 + rng.nextInt(28),
                                rng.nextInt(24), rng.nextInt(60)), tags);
                orders.add(o);
                byCustomer.computeIfAbsent(customer, k -> new ArrayList<>()).add(n);
                counts.merge(o.product(), 1, Integer::sum);
                if (n % 8 == 0) journal.append(o).append('\n');
            }
            double[] s = new double[2048];
            for (int j = 0; j < s.length; j++) s[j] = 50 + 10 * Math.sin(j / 30.0) + rng.nextGaussian();
            samples.add(s);
        }
        System.out.println("ready " + n);
        System.out.flush();
        System.in.readAllBytes();   // hold the data until the dumper closes stdin
        System.exit(orders.size() + byCustomer.size() + counts.size() + samples.size() + journal.length() > 0 ? 0 : 1);
    }
}
