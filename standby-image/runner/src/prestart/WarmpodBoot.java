// warmpod pre-started Java, run as
// `java <the cold command's JVM options> -Xbootclasspath/a:<jar> warmpod.boot.WarmpodBoot compile|run`
// from the jar standby-image/build-java-boot.sh builds (on the boot class
// path: no user class path entry, invisible to the system class loader), or,
// when that jar is missing or stale, by the JDK's source-file launcher as
// `java <options> WarmpodBoot.java compile|run`.
// Warms up, says "ready" on fd 4 (a pipe), reads
// "<stdin mode>\0<work dir>\0<argv>..." from fd 3 (a pipe, until EOF), then:
// - compile: runs javac in-process on argv (its command-line arguments) and
//   exits with its exit code, as `javac` would;
// - run: runs `argv[0]`'s main(argv[1..]) from the application class path
//   (".", the work directory) on this, the real "main" thread, as `java -cp .
//   Main` would. An uncaught exception leaves the JVM as it would cold (the
//   JVM, or the source launcher, prints it, other threads run on, exit code
//   1), its stack traces without our frames.
// Nothing of it is left in the work directory.

package warmpod.boot;

import java.io.ByteArrayOutputStream;
import java.io.File;
import java.io.FileInputStream;
import java.io.FileOutputStream;
import java.io.IOException;
import java.io.PrintWriter;
import java.io.StringWriter;
import java.lang.invoke.MethodHandle;
import java.lang.invoke.MethodHandles;
import java.lang.invoke.MethodType;
import java.lang.reflect.Method;
import java.lang.reflect.Modifier;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.Collections;
import java.util.IdentityHashMap;
import java.util.List;
import java.util.Set;

public class WarmpodBoot {
    /**
     * The frames below main: the source launcher's, which it trims itself
     * (none when run from the jar: the JVM calls main directly).
     */
    private static StackTraceElement[] launcherFrames;

    public static void main(String[] args) throws Throwable {
        StackTraceElement[] here = new Throwable().getStackTrace();
        launcherFrames = Arrays.copyOfRange(here, 1, here.length);
        boolean compile = args.length > 0 && args[0].equals("compile");
        MethodHandle javac = null;
        if (compile) {
            javac = javac(String[].class);
            warmUpCompiler(javac(String[].class, PrintWriter.class));
        } else {
            warmUpRuntime();
        }
        UserDir userDir = UserDir.find();
        if (!compile) {
            forgetStartUpPeak();
        }
        String[] fields = awaitProgram();
        String workDir = fields[1];
        String[] argv = Arrays.copyOfRange(fields, 2, fields.length);
        userDir.moveTo(workDir);
        if (compile) {
            System.exit((int) javac.invokeExact(argv));
        }
        run(argv[0], Arrays.copyOfRange(argv, 1, argv.length));
    }

    /**
     * The JVM's working directory as it cached it at start-up: the
     * user.dir property, jdk.internal.util.StaticProperty.USER_DIR, and the
     * copies java.io's and NIO's default file systems took, against which
     * they resolve relative paths (getAbsolutePath, toAbsolutePath, canonical
     * paths). The runner renames the directory to the job's when the job
     * arrives, so these must take the new name, as a cold JVM started there
     * has it; otherwise absolute paths would name the old, gone directory.
     * The fields are final and java.base is not open to us, so they are
     * written through sun.misc.Unsafe (jdk.unsupported), reached by
     * reflection (naming it would make javac warn). Found before "ready":
     * a JDK without these fields fails the pre-start loudly.
     */
    private static final class UserDir {
        private final MethodHandle putObject;
        private final Object staticBase;
        private final long staticOffset;
        private final Object ioFileSystem;
        private final long ioOffset;
        private final Object nioFileSystem;
        private final long nioOffset;

        private UserDir(MethodHandle putObject, Object staticBase, long staticOffset,
                        Object ioFileSystem, long ioOffset, Object nioFileSystem, long nioOffset) {
            this.putObject = putObject;
            this.staticBase = staticBase;
            this.staticOffset = staticOffset;
            this.ioFileSystem = ioFileSystem;
            this.ioOffset = ioOffset;
            this.nioFileSystem = nioFileSystem;
            this.nioOffset = nioOffset;
        }

        static UserDir find() throws Throwable {
            Class<?> unsafeClass = Class.forName("sun.misc.Unsafe");
            java.lang.reflect.Field theUnsafe = unsafeClass.getDeclaredField("theUnsafe");
            theUnsafe.setAccessible(true);
            Object unsafe = theUnsafe.get(null);
            MethodHandles.Lookup lookup = MethodHandles.publicLookup();
            MethodHandle staticBase = lookup.findVirtual(unsafeClass, "staticFieldBase",
                MethodType.methodType(Object.class, java.lang.reflect.Field.class)).bindTo(unsafe);
            MethodHandle staticOffset = lookup.findVirtual(unsafeClass, "staticFieldOffset",
                MethodType.methodType(long.class, java.lang.reflect.Field.class)).bindTo(unsafe);
            MethodHandle fieldOffset = lookup.findVirtual(unsafeClass, "objectFieldOffset",
                MethodType.methodType(long.class, java.lang.reflect.Field.class)).bindTo(unsafe);
            MethodHandle getObject = lookup.findVirtual(unsafeClass, "getObjectVolatile",
                MethodType.methodType(Object.class, Object.class, long.class)).bindTo(unsafe);
            MethodHandle putObject = lookup.findVirtual(unsafeClass, "putObjectVolatile",
                MethodType.methodType(void.class, Object.class, long.class, Object.class)).bindTo(unsafe);

            java.lang.reflect.Field userDir =
                Class.forName("jdk.internal.util.StaticProperty").getDeclaredField("USER_DIR");
            java.lang.reflect.Field fs = File.class.getDeclaredField("fs");
            Object ioFileSystem = (Object) getObject.invokeExact(
                (Object) staticBase.invokeExact(fs), (long) staticOffset.invokeExact(fs));
            java.lang.reflect.Field ioUserDir = ioFileSystem.getClass().getDeclaredField("userDir");
            Object nioFileSystem = java.nio.file.FileSystems.getDefault();
            java.lang.reflect.Field nioDefault =
                Class.forName("sun.nio.fs.UnixFileSystem").getDeclaredField("defaultDirectory");
            return new UserDir(putObject,
                (Object) staticBase.invokeExact(userDir), (long) staticOffset.invokeExact(userDir),
                ioFileSystem, (long) fieldOffset.invokeExact(ioUserDir),
                nioFileSystem, (long) fieldOffset.invokeExact(nioDefault));
        }

        void moveTo(String dir) throws Throwable {
            putObject.invokeExact(staticBase, staticOffset, (Object) dir);
            putObject.invokeExact(ioFileSystem, ioOffset, (Object) dir);
            byte[] bytes = dir.getBytes(java.nio.charset.Charset.forName(System.getProperty("sun.jnu.encoding")));
            putObject.invokeExact(nioFileSystem, nioOffset, (Object) bytes);
            System.setProperty("user.dir", dir);
        }
    }

    /** Says ready, then reads the program's fields. */
    private static String[] awaitProgram() throws IOException {
        try (FileOutputStream ready = new FileOutputStream("/proc/self/fd/4")) {
            ready.write('R');
        }
        ByteArrayOutputStream header = new ByteArrayOutputStream();
        try (FileInputStream in = new FileInputStream("/proc/self/fd/3")) {
            // Not readAllBytes: JDK 17's seeks, which a pipe fails.
            byte[] chunk = new byte[8192];
            for (int n; (n = in.read(chunk)) > 0; ) {
                header.write(chunk, 0, n);
            }
        }
        return new String(header.toByteArray(), StandardCharsets.UTF_8).split("\0", -1);
    }

    /**
     * `int com.sun.tools.javac.Main.compile(<parameters>)`; with `String[]`
     * alone, the `javac` command's entry point (same diagnostics, on
     * System.err). Found through the system class loader, which defines the
     * jdk.compiler module: the boot class path's loader (the jar's) cannot
     * see it (the source launcher's can, through its parent).
     */
    private static MethodHandle javac(Class<?>... parameters) throws ReflectiveOperationException {
        Class<?> main = Class.forName("com.sun.tools.javac.Main", true, ClassLoader.getSystemClassLoader());
        return MethodHandles.publicLookup()
            .findStatic(main, "compile", MethodType.methodType(int.class, parameters));
    }

    /** Compiles a throw-away class in a throw-away directory, its diagnostics dropped. */
    private static void warmUpCompiler(MethodHandle compile) throws Throwable {
        File dir = Files.createTempDirectory(new File(".").toPath(), ".warmpod-warm-up").toFile();
        try {
            File source = new File(dir, "Warm.java");
            Files.writeString(source.toPath(),
                "import java.util.*;\npublic class Warm { public static void main(String[] a) {\n"
                + " List<String> l = new ArrayList<>(List.of(a)); Collections.sort(l);\n"
                + " System.out.println(String.join(\",\", l) + new Scanner(System.in).nextLine()); } }\n");
            int ignored = (int) compile.invokeExact(
                new String[] {"-encoding", "UTF-8", "-d", dir.getPath(), source.getPath()},
                new PrintWriter(new StringWriter()));
        } finally {
            for (File f : dir.listFiles()) {
                f.delete();
            }
            dir.delete();
        }
    }

    /**
     * Loads and links what running a program uses: the method-handle call
     * of main, and the bootstrap methods nearly every program's first lines
     * link (string concatenation, lambdas and method references), whose
     * first use costs tens of milliseconds.
     */
    private static void warmUpRuntime() throws Throwable {
        MethodHandle handle = mainHandle(WarmpodBoot.class.getDeclaredMethod("noop", String[].class));
        handle.invokeExact(new String[0]);
        trim(new Throwable(), true);
        String[] words = {"b", "a"};
        Arrays.sort(words, (x, y) -> (x + y.length()).compareTo(y + x.length()));
        List.of(words).forEach(String::length);
    }

    private static void noop(String[] args) {}

    /** Frees the start-up's garbage and resets the peak RSS (VmHWM) the job's memory_kb reports. */
    private static void forgetStartUpPeak() {
        System.gc();
        try (FileOutputStream refs = new FileOutputStream("/proc/self/clear_refs")) {
            refs.write('5');
        } catch (IOException e) {
            // An older kernel: the peak then includes the start-up's.
        }
    }

    /** As `java -cp . <name> args...`: checks as the launcher does, then calls main. */
    private static void run(String name, String[] args) throws Throwable {
        System.setProperty("sun.java.command", String.join(" ", prepend(name, args)));
        ClassLoader loader = ClassLoader.getSystemClassLoader();
        Thread.currentThread().setContextClassLoader(loader);
        Class<?> main;
        try {
            main = Class.forName(name, false, loader);
        } catch (ClassNotFoundException | LinkageError e) {
            abort("Error: Could not find or load main class " + name + "\nCaused by: "
                + e.getClass().getName() + ": " + e.getLocalizedMessage());
            return;
        }
        Method method;
        try {
            method = main.getMethod("main", String[].class);
        } catch (NoSuchMethodException e) {
            abort("Error: Main method not found in class " + main.getName()
                + ", please define the main method as:\n   public static void main(String[] args)\n"
                + "or a JavaFX application class must extend javafx.application.Application");
            return;
        } catch (Throwable e) {
            abort("Error: Unable to initialize main class " + main.getName() + "\nCaused by: "
                + e.getClass().getName() + ": " + e.getLocalizedMessage());
            return;
        }
        String owner = method.getDeclaringClass().getName();
        if (!Modifier.isStatic(method.getModifiers())) {
            abort("Error: Main method is not static in class " + owner
                + ", please define the main method as:\n   public static void main(String[] args)");
            return;
        }
        if (method.getReturnType() != void.class) {
            abort("Error: Main method must return a value of type void in class " + owner
                + ", please \ndefine the main method as:\n   public static void main(String[] args)");
            return;
        }
        try {
            Class.forName(name, true, loader);
            mainHandle(method).invokeExact(args);
        } catch (Throwable t) {
            if (!trim(t, true)) {
                uncaught(t);
            }
            throw t;
        }
    }

    private static MethodHandle mainHandle(Method method) throws IllegalAccessException {
        method.setAccessible(true);
        return MethodHandles.lookup().unreflect(method)
            .asType(MethodType.methodType(void.class, String[].class));
    }

    private static void abort(String message) {
        System.err.println(message);
        System.exit(1);
    }

    /**
     * Takes our frames off `top` and every throwable it refers to, keeping
     * below `top`'s the launcher's (which it takes off itself). False when
     * `top`'s trace cannot be set (not writable).
     */
    private static boolean trim(Throwable top, boolean keepLauncherFrames) {
        Set<Throwable> seen = Collections.newSetFromMap(new IdentityHashMap<>());
        List<Throwable> todo = new ArrayList<>(List.of(top));
        while (!todo.isEmpty()) {
            Throwable t = todo.remove(todo.size() - 1);
            if (t == null || !seen.add(t)) {
                continue;
            }
            StackTraceElement[] trace = t.getStackTrace();
            StackTraceElement[] kept = withoutOurs(trace);
            if (t == top && keepLauncherFrames) {
                kept = concat(kept, launcherFrames);
            }
            if (kept.length != trace.length || t == top) {
                t.setStackTrace(kept);
            }
            todo.add(t.getCause());
            todo.addAll(List.of(t.getSuppressed()));
        }
        return top.getStackTrace().length >= launcherFrames.length;
    }

    /** The frames above the first of ours (and above the reflection calls into the program). */
    private static StackTraceElement[] withoutOurs(StackTraceElement[] trace) {
        int end = 0;
        while (end < trace.length && !trace[end].getClassName().equals(WarmpodBoot.class.getName())) {
            end++;
        }
        if (end == trace.length) {
            return trace;
        }
        while (end > 0 && isCallMachinery(trace[end - 1].getClassName())) {
            end--;
        }
        return Arrays.copyOf(trace, end);
    }

    private static boolean isCallMachinery(String className) {
        return className.equals("java.lang.Class") || className.startsWith("java.lang.invoke.")
            || className.startsWith("jdk.internal.reflect.");
    }

    /**
     * For a throwable whose trace is not writable: what the JVM does with an
     * uncaught exception in main (report it, wait for the other non-daemon
     * threads, exit 1).
     */
    private static void uncaught(Throwable t) throws InterruptedException {
        Thread self = Thread.currentThread();
        self.getUncaughtExceptionHandler().uncaughtException(self, t);
        for (Thread other : Thread.getAllStackTraces().keySet()) {
            if (other != self && !other.isDaemon()) {
                other.join();
            }
        }
        Runtime.getRuntime().exit(1);
    }

    private static StackTraceElement[] concat(StackTraceElement[] a, StackTraceElement[] b) {
        StackTraceElement[] out = Arrays.copyOf(a, a.length + b.length);
        System.arraycopy(b, 0, out, a.length, b.length);
        return out;
    }

    private static String[] prepend(String first, String[] rest) {
        String[] out = new String[rest.length + 1];
        out[0] = first;
        System.arraycopy(rest, 0, out, 1, rest.length);
        return out;
    }
}
