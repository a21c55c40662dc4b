#include <stdio.h>

int main(int argc, char **argv) {
    (void)argc;
    (void)argv;
    puts("hello from firebuild's multistage example");
    return 0;
}
