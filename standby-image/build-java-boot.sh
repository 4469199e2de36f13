#!/usr/bin/env bash
# The precompiled bootstrap of warmpod's pre-started Java, and a class-data
# sharing (AppCDS) archive for its compiler JVM.
#
# A pre-started Java sandbox (`warmpod-runner --prestart java`) starts two
# JVMs running standby-image/runner/src/prestart/WarmpodBoot.java. Loaded by
# the JDK's source-file launcher, that file is compiled in memory in each
# JVM at every start (~1 s of CPU apiece). This script compiles it once:
#   <dir>/warmpod-boot.jar     class warmpod.boot.WarmpodBoot, which the
#                              runner puts on the JVMs' boot class path
#                              (-Xbootclasspath/a:, no user class path entry);
#   <dir>/warmpod-boot.sha256  the SHA-256 of the WarmpodBoot.java it was
#                              built from: the runner uses the jar only when
#                              it equals the hash of the source embedded in
#                              the runner, and the source launcher otherwise;
#   <dir>/javac.jsa            a dynamic CDS archive of the classes the
#                              compiler JVM loads (javac's), dumped at the
#                              exit of a training compile run exactly as the
#                              runner starts that JVM (-XX:SharedArchiveFile=;
#                              the JVM ignores an archive that does not match
#                              its JDK, jar or class path, silently with the
#                              runner's -Xlog:cds=off -Xlog:cds+dynamic=off).
#
# Usage: build-java-boot.sh [dir] [WarmpodBoot.java]
#   (default /usr/local/lib/warmpod/java and the repository's source)
# Rebuilds only when the source, the JDK or the flags changed (a stamp file
# records them). The local sandboxes see /usr read-only: everything is left
# world-readable.
set -euo pipefail

DIR="${1:-/usr/local/lib/warmpod/java}"
SOURCE="${2:-$(dirname "$0")/runner/src/prestart/WarmpodBoot.java}"
JAVA=/usr/bin/java
JAVAC=/usr/bin/javac
JAR=/usr/bin/jar
# Must match the compiler JVM's options (the Java compile command's -J
# options in protocol/src/language.rs, -Xmx of the default compile memory
# limit): CDS refuses an archive dumped under another GC or heap layout.
FLAGS=(-XX:+UseSerialGC -XX:TieredStopAtLevel=1 -XX:-UsePerfData -Xmx1024m)

java_home="$(dirname "$(dirname "$(readlink -f "$JAVA")")")"
source_hash="$(sha256sum < "$SOURCE" | cut -d' ' -f1)"
jdk_files=()
for f in "$java_home/lib/modules" "$java_home/lib/server/libjvm.so" "$java_home/lib/server/classes.jsa"; do
  [ -e "$f" ] && jdk_files+=("$(stat -c '%n %s %Y' "$f")")
done
stamp="$source_hash $("$JAVA" -version 2>&1 | tr '\n' ' ') ${jdk_files[*]} ${FLAGS[*]}"
if [ -f "$DIR/.stamp" ] && [ "$(cat "$DIR/.stamp")" = "$stamp" ] \
   && [ -f "$DIR/warmpod-boot.jar" ] && [ -f "$DIR/javac.jsa" ]; then
  echo "build-java-boot: $DIR up to date"
  exit 0
fi

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/classes" "$work/out" "$work/boot"
# (javac wants a public class's file named after it.)
cp "$SOURCE" "$work/boot/WarmpodBoot.java"
"$JAVAC" -encoding UTF-8 -d "$work/classes" "$work/boot/WarmpodBoot.java"
"$JAR" --create --file "$work/out/warmpod-boot.jar" -C "$work/classes" .
printf '%s\n' "$source_hash" > "$work/out/warmpod-boot.sha256"
chmod -R a+rX "$work/out"

# The jar goes in place first: the archive records the boot class path's
# path, size and time, so it is dumped against the installed jar. Until the
# archive exists the runner uses the jar without it.
mkdir -p "$(dirname "$DIR")"
rm -rf "$DIR.new"
cp -a "$work/out" "$DIR.new"
rm -rf "$DIR"
mv "$DIR.new" "$DIR"

# Training: the compiler JVM as the runner starts it (class path "." an
# empty directory, as the fresh work directory is), given a compile of a
# typical program on its fd 3 ("ready" goes to fd 4), exactly as a job's.
mkdir -p "$work/run" "$work/src" "$work/bin"
cat > "$work/src/Main.java" <<'EOF'
import java.io.*;
import java.util.*;
import java.util.function.*;
import java.util.stream.*;

public class Main {
    record Point(int x, long y) implements Comparable<Point> {
        public int compareTo(Point o) { return Integer.compare(x, o.x); }
    }

    interface Shape { double area(); }

    enum Colour { RED, GREEN }

    static <T extends Comparable<T>> T max(List<T> xs) { return Collections.max(xs); }

    public static void main(String[] args) throws IOException {
        BufferedReader in = new BufferedReader(new InputStreamReader(System.in));
        StringTokenizer st = new StringTokenizer("3 1 2");
        List<Integer> xs = new ArrayList<>();
        while (st.hasMoreTokens()) xs.add(Integer.parseInt(st.nextToken()));
        Map<String, Integer> counts = new HashMap<>();
        for (String w : "a b a".split(" ")) counts.merge(w, 1, Integer::sum);
        Function<Integer, Integer> twice = x -> x * 2;
        Shape unit = () -> 1.0;
        int[] arr = xs.stream().mapToInt(Integer::intValue).sorted().toArray();
        PriorityQueue<Point> pq = new PriorityQueue<>();
        pq.add(new Point(1, 2L));
        StringBuilder sb = new StringBuilder();
        switch (Colour.RED) {
            case RED -> sb.append("red");
            default -> sb.append("other");
        }
        try (Scanner sc = new Scanner(System.in)) {
            System.out.printf("%s %d %.2f %s%n", xs.stream().map(twice).collect(Collectors.toList()),
                Arrays.stream(arr).sum(), unit.area(), max(xs) + " " + counts + pq.peek() + sb);
        } catch (RuntimeException e) {
            throw new IllegalStateException(e);
        }
        System.out.println("Hello, World!");
    }
}
EOF
printf 'null\0%s\0-encoding\0UTF-8\0-d\0%s\0%s' "$work/run" "$work/bin" "$work/src/Main.java" > "$work/program"
(
  cd "$work/run"
  "$JAVA" "${FLAGS[@]}" -Xbootclasspath/a:"$DIR/warmpod-boot.jar" \
    -XX:ArchiveClassesAtExit="$work/javac.jsa" -Xlog:cds=off -Xlog:cds+dynamic=off \
    warmpod.boot.WarmpodBoot compile 3< "$work/program" 4> /dev/null
)
[ -f "$work/bin/Main.class" ] || { echo "build-java-boot: the training compile failed" >&2; exit 1; }
chmod a+r "$work/javac.jsa"
cp "$work/javac.jsa" "$DIR/javac.jsa.new"
mv "$DIR/javac.jsa.new" "$DIR/javac.jsa"
# Checked: the archive maps (-Xshare:on fails otherwise) with the runner's options.
(
  cd "$work/run"
  "$JAVA" "${FLAGS[@]}" -Xbootclasspath/a:"$DIR/warmpod-boot.jar" \
    -XX:SharedArchiveFile="$DIR/javac.jsa" -Xshare:on -version > /dev/null 2>&1
) || { echo "build-java-boot: $DIR/javac.jsa does not map" >&2; rm -f "$DIR/javac.jsa"; exit 1; }
printf '%s' "$stamp" > "$DIR/.stamp"
chmod a+r "$DIR/.stamp"
echo "build-java-boot: built $DIR/warmpod-boot.jar and javac.jsa"
